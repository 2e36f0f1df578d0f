//! Typed access to the object's maps, and their sizes.

use aya::{Ebpf, maps::MapError};
use ram_common::maps::ALL;

use super::error::EnforceError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
