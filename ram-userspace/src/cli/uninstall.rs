//! `ram uninstall`: removes ram's pinned state (ending enforcement everywhere), its own cgroup
//! if empty, and the run directory's copy of the policy that no longer is in force.

use std::path::Path;

use anyhow::Result;
use ram::{
    cgroups::{self, DEDICATED_CGROUP},
    daemon::control,
    events::auditor,
    kernel::{EnforceError, PinDir, uninstall},
};

/// How often `--then-wait` tries again while a daemon holds the pin directory.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long `--then-wait` waits for the daemons to stop. `helm uninstall` deletes them right
/// after starting the hook; a daemon still there much later belongs to something else (a new
/// install beside an uninstall hook left behind), and must not be uninstalled at its next
/// restart.
const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `then_wait`: a daemon holding the pin directory is waited for (the Kubernetes hook runs
/// while the DaemonSet's daemons are being stopped), and once done this stays until SIGTERM.
pub fn run(pin_dir: &Path, run_dir: &Path, then_wait: bool) -> Result<()> {
    let pins = PinDir::new(pin_dir);
    let mut said = false;
    let started = std::time::Instant::now();
    let removed = loop {
        match uninstall(&pins) {
            Err(EnforceError::Busy { path }) if then_wait && started.elapsed() >= WAIT_LIMIT => {
                println!(
                    "a ram daemon still holds {} after {} s: not uninstalling (this hook is \
                     older than that daemon's installation; delete it)",
                    path.display(),
                    WAIT_LIMIT.as_secs()
                );
                return wait_for_stop();
            }
            Err(EnforceError::Busy { path }) if then_wait => {
                if !said {
                    println!(
                        "a ram daemon holds {}; uninstalling once it has stopped",
                        path.display()
                    );
                    said = true;
                }
                std::thread::sleep(RETRY);
            }
            other => break other?,
        }
    };
    println!(
        "removed {} link(s), {} program(s) and {} map(s) under {}; nothing is enforced by ram now",
        removed.links,
        removed.programs,
        removed.maps,
        pin_dir.display()
    );
    // The copy `ram policy show` prints describes enforcement that no longer is; the lost-event
    // count it kept belongs to the kernel counter just removed.
    for name in [control::POLICY_COPY_NAME, auditor::DROPPED_REPORTED] {
        match std::fs::remove_file(run_dir.join(name)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => println!("could not remove {}: {err}", run_dir.join(name).display()),
        }
    }
    // ram's own cgroup goes too, if this installation enforced it and nothing runs in it.
    if let Ok(mount) = cgroups::cgroup2_mount() {
        let own = mount.join(DEDICATED_CGROUP);
        let ours = std::fs::metadata(&own).is_ok_and(|m| {
            removed
                .cgroup_ids
                .contains(&std::os::unix::fs::MetadataExt::ino(&m))
        });
        if ours {
            match std::fs::remove_dir(&own) {
                Ok(()) => println!("removed cgroup {}", own.display()),
                Err(err) => println!(
                    "left cgroup {} in place ({err}); processes still run in it, unenforced",
                    own.display()
                ),
            }
        }
    }
    if then_wait {
        wait_for_stop()?;
    }
    Ok(())
}

/// Blocks until SIGTERM or SIGINT (`--then-wait`).
fn wait_for_stop() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    println!("uninstalled; waiting for SIGTERM");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok::<_, std::io::Error>(())
    })?;
    Ok(())
}
