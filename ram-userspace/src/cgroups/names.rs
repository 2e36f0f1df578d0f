//! cgroup id → path, for audit records (the process may be in a child of an enforced cgroup).

use std::{collections::HashMap, path::PathBuf};

use super::{CgroupDir, cgroup2_mount, find_by_id};

pub struct CgroupNames {
    roots: Vec<CgroupDir>,
    mount: Option<PathBuf>,
    known: HashMap<u64, Option<String>>,
}

impl CgroupNames {
    /// A cgroup tree walked per unknown id is bounded by this many directories.
    const MAX_WALK: usize = 10_000;
    /// Bounded cache: cgroups come and go; forget everything rather than grow forever.
    const MAX_KNOWN: usize = 4096;

    pub fn new(roots: &[CgroupDir]) -> Self {
        Self {
            roots: roots.to_vec(),
            mount: cgroup2_mount().ok(),
            known: HashMap::new(),
        }
    }

    /// The cgroups enforced now: named from here on (a container enforced after the start, and
    /// whatever is made below it), even if an event asked for one of them before.
    pub fn enforced(&mut self, dirs: &[CgroupDir]) {
        for dir in dirs {
            if !self.roots.iter().any(|root| root.id == dir.id) {
                self.roots.push(dir.clone());
            }
            // Known by path from now on, even once removed: a short-lived container's last
            // events are often read after its cgroup is gone.
            let path = self.relative(&dir.path);
            if self.known.len() > Self::MAX_KNOWN {
                self.known.clear();
            }
            self.known.insert(dir.id, Some(path));
        }
        self.roots
            .retain(|root| dirs.iter().any(|dir| dir.id == root.id));
    }

    /// Whether the cgroup at `relative` (`/docker/<id>`) is a directory owned by root.
    pub fn owned_by_root(&self, relative: &str) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Some(mount) = &self.mount else {
            return false;
        };
        std::fs::metadata(mount.join(relative.trim_start_matches('/')))
            .is_ok_and(|m| m.is_dir() && m.uid() == 0)
    }

    fn relative(&self, path: &std::path::Path) -> String {
        match self.mount.as_ref().and_then(|m| path.strip_prefix(m).ok()) {
            Some(relative) => format!("/{}", relative.display()),
            None => path.display().to_string(),
        }
    }

    /// The path relative to the cgroup2 mount (`/ram.enforced/job`), as systemd shows them.
    pub fn lookup(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.known.get(&id) {
            return known.clone();
        }
        let found = find_by_id(&self.roots, id, Self::MAX_WALK).map(|path| self.relative(&path));
        if self.known.len() > Self::MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(id, found.clone());
        found
    }
}
