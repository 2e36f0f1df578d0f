//! The programs' links on the enforced cgroups ([`Links`]): attaching (or swapping the program
//! of a link a previous daemon pinned), enforcing one more cgroup, releasing one, removing the
//! links of cgroups no longer enforced, and repairing links someone else detached.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs, io,
    os::fd::AsFd as _,
    path::PathBuf,
};

use aya::Ebpf;

use super::{
    error::EnforceError,
    object::{GATES, attached_programs, program_fd},
    pins::{PinDir, remove_pins},
};
use crate::{cgroups::CgroupDir, sys};

/// One enforced cgroup.
#[derive(Debug)]
struct Enforced {
    dir: CgroupDir,
    /// Set once the cgroup was found removed (reported once).
    gone: bool,
}

/// The links of the loaded programs on the enforced cgroups, pinned under `links/`.
pub(super) struct Links {
    pins: PinDir,
    enforced: Vec<Enforced>,
    /// The loaded programs' ids, to recognize them among those attached to a cgroup.
    program_ids: StdHashMap<&'static str, u32>,
}

impl Links {
    /// No cgroup enforced yet.
    pub(super) fn new(pins: PinDir, program_ids: StdHashMap<&'static str, u32>) -> Self {
        Self {
            pins,
            enforced: Vec::new(),
            program_ids,
        }
    }

    pub(super) fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Pins a link for every program of `ebpf` on `dir`, or swaps the program of a link already
    /// pinned there. Returns (links updated, links created).
    fn attach(&self, ebpf: &Ebpf, dir: &CgroupDir) -> Result<(usize, usize), EnforceError> {
        let cgroup = dir.open().map_err(|err| EnforceError::Attach {
            program: GATES[0].name,
            cgroup: dir.path.display().to_string(),
            source: io::Error::other(err.to_string()),
        })?;
        let link_dir = self.pins.create_cgroup_links(dir.id)?;
        let (mut updated, mut created) = (0, 0);
        for (name, attach_type) in attached_programs() {
            let program = program_fd(ebpf, name)?;
            let path = link_dir.join(name);
            let attach_error = |source| EnforceError::Attach {
                program: name,
                cgroup: dir.path.display().to_string(),
                source,
            };
            if let Ok(link) = sys::obj_get(&path) {
                match sys::link_update(link.as_fd(), program.as_fd()) {
                    Ok(()) => {
                        updated += 1;
                        continue;
                    }
                    // Detached by someone: the link is dead, make a new one below.
                    Err(err) if err.raw_os_error() == Some(libc::ENOLINK) => {
                        fs::remove_file(&path).map_err(attach_error)?;
                    }
                    // Anything else: the link may still be live (and enforcing); keep it.
                    Err(err) => return Err(attach_error(err)),
                }
            }
            let link = sys::link_create(program.as_fd(), cgroup.as_fd(), attach_type)
                .map_err(attach_error)?;
            sys::obj_pin(&link, &path).map_err(attach_error)?;
            created += 1;
        }
        Ok((updated, created))
    }

    /// Attaches to `dir` and counts it enforced (at start-up: every cgroup is new). Returns
    /// (links updated, links created).
    pub(super) fn add(
        &mut self,
        ebpf: &Ebpf,
        dir: &CgroupDir,
    ) -> Result<(usize, usize), EnforceError> {
        let counts = self.attach(ebpf, dir)?;
        self.enforced.push(Enforced {
            dir: dir.clone(),
            gone: false,
        });
        Ok(counts)
    }

    /// Enforces one more cgroup, unless it is enforced already. Returns whether it was new.
    pub(super) fn enforce(&mut self, ebpf: &Ebpf, dir: &CgroupDir) -> Result<bool, EnforceError> {
        if self.enforced.iter().any(|e| e.dir.id == dir.id && !e.gone) {
            return Ok(false);
        }
        self.enforced.retain(|e| e.dir.id != dir.id);
        self.add(ebpf, dir)?;
        Ok(true)
    }

    /// Stops enforcing cgroup `id`: removes its pinned links (which detaches the programs if
    /// the cgroup still exists) and forgets it.
    pub(super) fn release(&mut self, id: u64) -> Result<(), EnforceError> {
        self.enforced.retain(|e| e.dir.id != id);
        remove_pins(&self.pins.cgroup_links(id)).map(drop)
    }

    /// Removes pinned links of cgroups not enforced (which detaches them). Returns their ids.
    pub(super) fn remove_stale(&self) -> Result<Vec<u64>, EnforceError> {
        let keep: HashSet<String> = self.enforced.iter().map(|e| e.dir.id.to_string()).collect();
        let mut stale = Vec::new();
        let links = self.pins.links();
        let entries = fs::read_dir(&links).map_err(|source| EnforceError::PinDir {
            path: links.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            remove_pins(&entry.path())?;
            stale.push(name.parse().unwrap_or(0));
        }
        Ok(stale)
    }

    /// Checks that every program is still attached to every enforced cgroup and re-attaches
    /// what is missing. Returns one message per repair or per cgroup found removed.
    pub(super) fn verify(&mut self, ebpf: &Ebpf) -> Vec<String> {
        let mut messages = Vec::new();
        for index in 0..self.enforced.len() {
            if self.enforced[index].gone {
                continue;
            }
            let dir = self.enforced[index].dir.clone();
            let Ok(file) = dir.open() else {
                self.enforced[index].gone = true;
                messages.push(format!(
                    "cgroup {} was removed; nothing is left to enforce there",
                    dir.path.display()
                ));
                continue;
            };
            let mut missing = Vec::new();
            for (name, attach_type) in attached_programs() {
                let ours = self.program_ids.get(name).copied();
                match sys::attached_program_ids(&file, attach_type) {
                    Ok(ids) if ours.is_some_and(|id| ids.contains(&id)) => {}
                    Ok(_) => missing.push(name),
                    // Cannot tell (e.g. the cgroup is going away): check again next time
                    // rather than re-attach on a guess.
                    Err(err) => log::debug!("querying {}: {err}", dir.path.display()),
                }
            }
            if missing.is_empty() {
                continue;
            }
            let outcome = match self.attach(ebpf, &dir) {
                Ok((_, created)) => format!("re-attached {created} program(s)"),
                Err(err) => format!("re-attaching failed: {err}"),
            };
            messages.push(format!(
                "{} detached from cgroup {} by someone else; {outcome}",
                missing.join(", "),
                dir.path.display()
            ));
        }
        messages
    }

    /// The enforced cgroups (path, id, still there).
    pub(super) fn cgroups(&self) -> Vec<(PathBuf, u64, bool)> {
        self.enforced
            .iter()
            .map(|e| (e.dir.path.clone(), e.dir.id, !e.gone))
            .collect()
    }
}
