//! Typed access to the object's maps, their sizes, and the two ways ram rewrites them: the one
//! refill helper, which makes a policy map hold exactly a new set of entries, and the removal
//! of learned addresses (which the kernel may remove meanwhile).

use std::borrow::BorrowMut;

use aya::{
    Ebpf, Pod,
    maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use ram_common::maps::ALL;

use super::error::{EnforceError, RefillStep};

/// Map `name` of the object as the typed map `T` (e.g. `HashMap<_, K, V>`).
pub(super) fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, EnforceError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(EnforceError::MissingMap { map: name })?;
    T::try_from(map).map_err(|source| map_error(name, source))
}

/// Map `name` of the object, read-only, as the typed map `T`.
pub(super) fn typed_map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, EnforceError>
where
    T: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or(EnforceError::MissingMap { map: name })?;
    T::try_from(map).map_err(|source| map_error(name, source))
}

pub(super) fn map_error(map: &'static str, source: MapError) -> EnforceError {
    EnforceError::Map { map, source }
}

/// The object must hold exactly the maps ram pins (section maps such as `.rodata` aside): a map
/// left unpinned would silently start empty on every restart.
pub(super) fn check_maps(ebpf: &Ebpf) -> Result<(), EnforceError> {
    let mut found: Vec<String> = ebpf
        .maps()
        .map(|(name, _)| name.to_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    found.sort();
    let mut expected = ALL.to_vec();
    expected.sort_unstable();
    if found != expected {
        return Err(EnforceError::UnexpectedMaps { found, expected });
    }
    Ok(())
}

/// `max_entries` of a loaded hash map, as the kernel has it.
pub(super) fn map_capacity(ebpf: &Ebpf, name: &'static str) -> Result<u32, EnforceError> {
    let map = ebpf
        .map(name)
        .ok_or(EnforceError::MissingMap { map: name })?;
    let aya::maps::Map::HashMap(data) = map else {
        return Err(EnforceError::MissingMap { map: name });
    };
    data.info()
        .map(|info| info.max_entries())
        .map_err(|source| map_error(name, source))
}

/// Map sizes follow the policy (at least one entry: the kernel refuses empty maps).
pub(super) fn check_size(
    map: &'static str,
    needed: usize,
    limit: u32,
) -> Result<u32, EnforceError> {
    match u32::try_from(needed) {
        Ok(needed) if needed <= limit => Ok(needed.max(1)),
        _ => Err(EnforceError::TooLarge { map, needed, limit }),
    }
}

/// A map whose keys can be listed, removed and written: aya's `HashMap` and `LpmTrie` (whose key
/// is `Key<K>`, a prefix length and the data), and the fakes of the tests.
pub(super) trait RefillableMap {
    type Key;
    type Value;
    /// Every key, in the map's order; fails on the first key the kernel does not hand over.
    fn list_keys(&self) -> Result<Vec<Self::Key>, MapError>;
    fn delete(&mut self, key: &Self::Key) -> Result<(), MapError>;
    /// Writes `key` (`flags`: `BPF_ANY`, `BPF_EXIST`, ...).
    fn put(&mut self, key: &Self::Key, value: &Self::Value, flags: u64) -> Result<(), MapError>;
}

impl<T: BorrowMut<MapData>, K: Pod, V: Pod> RefillableMap for HashMap<T, K, V> {
    type Key = K;
    type Value = V;
    fn list_keys(&self) -> Result<Vec<K>, MapError> {
        self.keys().collect()
    }
    fn delete(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
    fn put(&mut self, key: &K, value: &V, flags: u64) -> Result<(), MapError> {
        self.insert(key, value, flags)
    }
}

impl<T: BorrowMut<MapData>, K: Pod, V: Pod> RefillableMap for LpmTrie<T, K, V> {
    type Key = Key<K>;
    type Value = V;
    fn list_keys(&self) -> Result<Vec<Key<K>>, MapError> {
        self.keys().collect()
    }
    fn delete(&mut self, key: &Key<K>) -> Result<(), MapError> {
        self.remove(key)
    }
    fn put(&mut self, key: &Key<K>, value: &V, flags: u64) -> Result<(), MapError> {
        self.insert(key, value, flags)
    }
}

/// Whether a map operation failed because the key is not there (ENOENT).
pub(super) fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(err) => err.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Makes `map` (named `name` in errors) hold exactly `entries`: removes every key it has, then
/// inserts the entries. Used on the policy slot about to go live, so every failure is an error
/// — listing, removing (a key already gone, ENOENT, is fine: it is not there either way) or
/// inserting — and the caller must not switch to the slot. Returns how many entries it holds.
pub(super) fn refill<M: RefillableMap>(
    map: &mut M,
    name: &'static str,
    entries: impl IntoIterator<Item = (M::Key, M::Value)>,
) -> Result<usize, EnforceError> {
    let failed = |step, source| EnforceError::Refill {
        map: name,
        step,
        source,
    };
    let old = map
        .list_keys()
        .map_err(|source| failed(RefillStep::List, source))?;
    for key in &old {
        match map.delete(key) {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {}
            Err(source) => return Err(failed(RefillStep::Remove, source)),
        }
    }
    let mut count = 0;
    for (key, value) in entries {
        map.put(&key, &value, 0)
            .map_err(|source| failed(RefillStep::Insert, source))?;
        count += 1;
    }
    Ok(count)
}

/// What [`remove_keys`] or [`overwrite_existing`] did.
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    /// Keys removed or rewritten (or found gone: nothing left to do for them).
    pub(super) done: usize,
    /// Keys that failed for another reason than being gone, and the first such error.
    pub(super) failed: usize,
    pub(super) first_error: Option<MapError>,
}

impl Cleanup {
    fn fail(&mut self, err: MapError) {
        self.failed += 1;
        self.first_error.get_or_insert(err);
    }
}

/// Removes `keys` from `map`, each independently: a key already gone (ENOENT) counts as
/// removed; any other failure is counted and the rest are still tried. For maps the kernel
/// writes too (`LEARNED`), where a key listed a moment ago may have gone since.
pub(super) fn remove_keys<M: RefillableMap>(map: &mut M, keys: &[M::Key]) -> Cleanup {
    let mut removal = Cleanup::default();
    for key in keys {
        match map.delete(key) {
            Ok(()) => removal.done += 1,
            Err(err) if is_not_found(&err) => removal.done += 1,
            Err(err) => removal.fail(err),
        }
    }
    removal
}

/// Rewrites entries that exist (`BPF_EXIST`): one the kernel removed meanwhile stays removed
/// and counts as done; other failures are counted like [`remove_keys`]'s.
pub(super) fn overwrite_existing<M: RefillableMap>(
    map: &mut M,
    entries: &[(M::Key, M::Value)],
) -> Cleanup {
    let mut done = Cleanup::default();
    for (key, value) in entries {
        match map.put(key, value, u64::from(aya_obj::generated::BPF_EXIST)) {
            Ok(()) => done.done += 1,
            Err(err) if is_not_found(&err) => done.done += 1,
            Err(err) => done.fail(err),
        }
    }
    done
}

/// The kernel's side of a metrics scrape, read from the pinned maps on a thread of its own (the
/// metrics server's), so that a scrape never waits on the event loop.
pub struct KernelReader {
    counters: aya::maps::PerCpuArray<MapData, u64>,
    learned: HashMap<MapData, ram_common::LearnedKey, ram_common::LearnedAddr>,
    learned_capacity: usize,
}

impl KernelReader {
    /// Opens the counters and the learned map pinned in `pins` (by a daemon already running).
    pub fn open(pins: &super::PinDir) -> Result<Self, EnforceError> {
        use ram_common::maps::{COUNTERS, LEARNED};
        let open = |name: &'static str| {
            MapData::from_pin(pins.map(name)).map_err(|source| map_error(name, source))
        };
        let counters =
            aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(COUNTERS)?))
                .map_err(|source| map_error(COUNTERS, source))?;
        let learned_data = open(LEARNED)?;
        let learned_capacity = learned_data
            .info()
            .map(|info| info.max_entries() as usize)
            .unwrap_or(0);
        let learned = HashMap::try_from(aya::maps::Map::HashMap(learned_data))
            .map_err(|source| map_error(LEARNED, source))?;
        Ok(Self {
            counters,
            learned,
            learned_capacity,
        })
    }

    /// Every counter's total, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        ram_common::Counter::ALL
            .iter()
            .map(|counter| {
                let total = self
                    .counters
                    .get(&(*counter as u32), 0)
                    .map(|values| values.iter().sum())
                    .unwrap_or(0);
                (counter.as_str(), total)
            })
            .collect()
    }

    /// Entries in the learned map (expired ones until the daemon removes them, within ten
    /// seconds), and its capacity. One system call per entry: a full map of 65,536 takes some
    /// tens of milliseconds.
    pub fn learned(&self) -> (usize, usize) {
        (self.learned.keys().flatten().count(), self.learned_capacity)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, io};

    use aya::sys::SyscallError;

    use super::*;

    /// A map in memory that fails the operations it is told to.
    #[derive(Default)]
    struct FakeMap {
        entries: BTreeMap<u32, u32>,
        /// errno for deleting this key.
        fail_delete: Option<(u32, i32)>,
        fail_list: bool,
        fail_put: Option<u32>,
    }

    fn syscall_error(call: &'static str, errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    impl RefillableMap for FakeMap {
        type Key = u32;
        type Value = u32;
        fn list_keys(&self) -> Result<Vec<u32>, MapError> {
            if self.fail_list {
                return Err(syscall_error("bpf_map_get_next_key", libc::EPERM));
            }
            Ok(self.entries.keys().copied().collect())
        }
        fn delete(&mut self, key: &u32) -> Result<(), MapError> {
            match self.fail_delete {
                Some((failing, errno)) if failing == *key => {
                    if errno == libc::ENOENT {
                        // Gone meanwhile.
                        self.entries.remove(key);
                    }
                    Err(syscall_error("bpf_map_delete_elem", errno))
                }
                _ => match self.entries.remove(key) {
                    Some(_) => Ok(()),
                    None => Err(syscall_error("bpf_map_delete_elem", libc::ENOENT)),
                },
            }
        }
        fn put(&mut self, key: &u32, value: &u32, flags: u64) -> Result<(), MapError> {
            if self.fail_put == Some(*key) {
                return Err(syscall_error("bpf_map_update_elem", libc::E2BIG));
            }
            if flags == u64::from(aya_obj::generated::BPF_EXIST) && !self.entries.contains_key(key)
            {
                return Err(syscall_error("bpf_map_update_elem", libc::ENOENT));
            }
            self.entries.insert(*key, *value);
            Ok(())
        }
    }

    fn fake(entries: &[(u32, u32)]) -> FakeMap {
        FakeMap {
            entries: entries.iter().copied().collect(),
            ..FakeMap::default()
        }
    }

    #[test]
    fn refill_leaves_exactly_the_new_entries() {
        let mut map = fake(&[(1, 10), (2, 20), (3, 30)]);
        let count = refill(&mut map, "RULE_IDS_1", [(2, 21), (4, 41)]).unwrap();
        assert_eq!(count, 2);
        assert_eq!(map.entries, BTreeMap::from([(2, 21), (4, 41)]));
    }

    #[test]
    fn an_entry_already_gone_does_not_fail_a_refill() {
        let mut map = fake(&[(1, 10), (2, 20)]);
        map.fail_delete = Some((1, libc::ENOENT));
        refill(&mut map, "RULE_IDS_1", [(5, 50)]).unwrap();
        assert_eq!(map.entries, BTreeMap::from([(5, 50)]));
    }

    #[test]
    fn a_refused_removal_fails_the_refill_by_map_name() {
        let mut map = fake(&[(1, 10), (2, 20)]);
        map.fail_delete = Some((2, libc::EPERM));
        let err = refill(&mut map, "ALLOWED_CIDRS_0", [(5, 50)]).unwrap_err();
        assert!(
            matches!(
                &err,
                EnforceError::Refill {
                    map: "ALLOWED_CIDRS_0",
                    step: RefillStep::Remove,
                    source: MapError::SyscallError(SyscallError { io_error, .. }),
                } if io_error.raw_os_error() == Some(libc::EPERM)
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("ALLOWED_CIDRS_0"), "{err}");
        // Nothing of the new policy went in: the slot is not ready and must not go live.
        assert!(!map.entries.contains_key(&5));
    }

    #[test]
    fn listing_and_insert_failures_fail_the_refill() {
        let mut map = fake(&[(1, 10)]);
        map.fail_list = true;
        let err = refill(&mut map, "RESOLVERS_1", [(5, 50)]).unwrap_err();
        assert!(
            matches!(
                err,
                EnforceError::Refill {
                    step: RefillStep::List,
                    ..
                }
            ),
            "{err:?}"
        );

        let mut map = fake(&[(1, 10)]);
        map.fail_put = Some(6);
        let err = refill(&mut map, "RESOLVERS_1", [(5, 50), (6, 60)]).unwrap_err();
        assert!(
            matches!(
                err,
                EnforceError::Refill {
                    step: RefillStep::Insert,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn removing_learned_keys_counts_failures_and_goes_on() {
        let mut map = fake(&[(1, 10), (2, 20), (3, 30)]);
        map.fail_delete = Some((2, libc::EPERM));
        // 4 was never there (the kernel removed it, say): counts as removed.
        let removal = remove_keys(&mut map, &[1, 2, 3, 4]);
        assert_eq!((removal.done, removal.failed), (3, 1));
        assert!(removal.first_error.is_some());
        assert_eq!(map.entries, BTreeMap::from([(2, 20)]));
    }

    #[test]
    fn overwriting_spares_entries_removed_meanwhile() {
        let mut map = fake(&[(1, 10)]);
        let done = overwrite_existing(&mut map, &[(1, 11), (2, 21)]);
        assert_eq!((done.done, done.failed), (2, 0));
        assert_eq!(map.entries, BTreeMap::from([(1, 11)]));
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(check_size("LEARNED", 0, 10).unwrap(), 1);
        assert_eq!(check_size("LEARNED", 10, 10).unwrap(), 10);
        assert!(matches!(
            check_size("LEARNED", 11, 10),
            Err(EnforceError::TooLarge {
                needed: 11,
                limit: 10,
                ..
            })
        ));
    }
}
