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
            if self.known.get(&dir.id).is_some_and(Option::is_none) {
                self.known.remove(&dir.id);
            }
        }
        self.roots
            .retain(|root| dirs.iter().any(|dir| dir.id == root.id));
    }

    /// The path relative to the cgroup2 mount (`/ram.enforced/job`), as systemd shows them.
    pub fn lookup(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.known.get(&id) {
            return known.clone();
        }
        let found = find_by_id(&self.roots, id, Self::MAX_WALK).map(|path| {
            match self.mount.as_ref().and_then(|m| path.strip_prefix(m).ok()) {
                Some(relative) => format!("/{}", relative.display()),
                None => path.display().to_string(),
            }
        });
        if self.known.len() > Self::MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(id, found.clone());
        found
    }
}
