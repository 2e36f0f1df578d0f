//! [`Enforcer`]: the daemon's handle on the kernel side. Opening it loads the object with the
//! pinned maps, puts a policy in force and attaches to the enforced cgroups; then it swaps
//! policies in atomically ([`Enforcer::apply`]), follows the cgroups (through `attach.rs`'s
//! `Links`) and reads the counters and the learned addresses.

use std::{collections::HashSet, fs, path::PathBuf};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, SockHash, lpm_trie::Key},
};
use ram_common::{
    Addr16, BUILTIN_RULE, CONTAINER_RESOLVER_RULE_ID, CidrRule, ConnectedDest, Counter, FlowKey,
    LearnedAddr, LearnedKey, NameRule, NetnsResolverKey, PolicyConfig, ResolverRule, TLS_ALLOWED,
    TaughtKey, TlsFlow,
    dns::{NAME_BUF, suffix_hash},
    maps::{
        ALLOWED_CIDRS, ALLOWED_CIDRS_MAX, ALLOWED_NAMES, ALLOWED_NAMES_MAX, CONNECTED_UDP,
        COUNTERS, DNS_EVENTS, GATE_EVENTS, LEARNED, LEARNED_MAX, NETNS_RESOLVERS,
        NETNS_RESOLVERS_MAX, POLICY_CONFIG, POLICY_SLOT, RESOLVERS, RESOLVERS_MAX, RULE_IDS,
        SEARCH_DOMAINS, SEARCH_DOMAINS_MAX, TAUGHT_NAMES, TLS_EVENTS, TLS_FLOWS, TLS_SOCKETS,
    },
    tls::name_hash,
};

use super::{
    attach::Links,
    error::EnforceError,
    maps::{
        check_size, map_capacity, map_error, overwrite_existing, refill, remove_keys, typed_map,
        typed_map_ref,
    },
    object::{self, program_names},
    pins::PinDir,
    probe,
};
use crate::{cgroups::CgroupDir, compile::CompiledPolicy, sys};

/// How [`Enforcer::open`] found the pinned state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Maps of a previous daemon were reused (learned addresses and counters carried over).
    pub adopted_maps: bool,
    /// Links of a previous daemon swapped to this daemon's programs.
    pub links_updated: usize,
    pub links_created: usize,
    /// Links of cgroups this daemon no longer enforces, removed (with their cgroups' ids).
    pub stale_cgroups: Vec<u64>,
    /// Map directories of another ram version, removed after the swap.
    pub foreign_layouts: Vec<PathBuf>,
    /// `LEARNED`'s capacity when it differs from `dns.max_learned` (a reused map keeps its size).
    pub learned_capacity_kept: Option<u32>,
}

/// What [`Enforcer::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The slot now in force.
    pub slot: u32,
    /// Learned addresses dropped because the new policy no longer has their rule.
    pub learned_dropped: usize,
}

/// The loaded programs and their pinned maps and links.
pub struct Enforcer {
    ebpf: Ebpf,
    /// Holds the pin directory's lock while the daemon runs.
    _lock: fs::File,
    links: Links,
    learned_capacity: u32,
    /// Rule ids of the hostname rules and resolvers in force: learned entries of others are
    /// removed.
    kept_rules: HashSet<u64>,
    kept_resolvers: HashSet<u64>,
    /// The key of the search-domain hashes (`PolicyConfig::search_seed`): the one of the
    /// maps adopted, else a new random one.
    search_seed: u64,
    /// Allowed TLS flows whose sockets were taken out of `TLS_SOCKETS` already.
    released_sockets: HashSet<FlowKey>,
}

/// A new search-domain key: 8 bytes of the kernel's random pool, never 0.
fn random_seed() -> std::io::Result<u64> {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes) | 1)
}

/// The search-domain key of the policy in force in maps a previous daemon pinned (0: none).
fn adopted_search_seed(ebpf: &mut Ebpf) -> Option<u64> {
    let slot: Array<_, u32> = typed_map(ebpf, POLICY_SLOT).ok()?;
    let active = slot.get(&0, 0).ok()? & 1;
    let config: Array<_, PolicyConfig> = typed_map(ebpf, POLICY_CONFIG).ok()?;
    let seed = config.get(&active, 0).ok()?.search_seed;
    (seed != 0).then_some(seed)
}

impl Enforcer {
    /// Loads the programs with the maps pinned under `pins` (reusing those a previous daemon
    /// left), puts `policy` in force, and attaches to `cgroups` — swapping the programs of
    /// links a previous daemon pinned, so that a restart leaves no gap. Links of other cgroups
    /// are removed. A failure before the attaches leaves no new link; it may have updated the
    /// pinned programs' tail-call entry, their `progs/` pins and (on adopted maps) the policy in
    /// force, all of which the running programs accept.
    pub fn open(
        pins: PinDir,
        policy: &CompiledPolicy,
        cgroups: &[CgroupDir],
        cgroups_complete: bool,
    ) -> Result<(Self, OpenReport), EnforceError> {
        if !object::embedded() {
            return Err(EnforceError::NoObject);
        }
        if let Err(err) = sys::raise_memlock_limit() {
            // Kernels since 5.11 do not charge maps to it; older ones fail the load, by name.
            log::debug!("could not raise RLIMIT_MEMLOCK: {err}");
        }
        // Before anything is loaded: a kernel without a feature ram needs is refused by name.
        probe::check_kernel()?;
        let lock = pins.lock()?;
        let mut report = OpenReport {
            adopted_maps: pins.map(POLICY_SLOT).exists(),
            ..Default::default()
        };

        let learned_entries = check_size(LEARNED, policy.max_learned as usize, LEARNED_MAX)?;
        let mut ebpf = object::load(&pins, learned_entries)?;
        let learned_capacity = map_capacity(&ebpf, LEARNED)?;
        if learned_capacity != learned_entries {
            report.learned_capacity_kept = Some(learned_capacity);
        }
        let program_ids = object::load_programs(&mut ebpf, &pins)?;
        let search_seed = match adopted_search_seed(&mut ebpf) {
            Some(seed) => seed,
            None => random_seed().map_err(|source| EnforceError::PinDir {
                path: PathBuf::from("/dev/urandom"),
                source,
            })?,
        };

        let mut enforcer = Self {
            ebpf,
            _lock: lock,
            links: Links::new(pins, program_ids),
            learned_capacity,
            kept_rules: HashSet::new(),
            kept_resolvers: HashSet::new(),
            search_seed,
            released_sockets: HashSet::new(),
        };
        // The policy goes in before any new attach: a fresh link never runs without one.
        enforcer.apply(policy)?;
        for dir in cgroups {
            let (updated, created) = enforcer.links.add(&enforcer.ebpf, dir)?;
            report.links_updated += updated;
            report.links_created += created;
        }
        // Only with the whole list: a partial one would drop cgroups it did not reach.
        if cgroups_complete {
            report.stale_cgroups = enforcer.links.remove_stale()?;
        }
        for dir in enforcer.links.pins().foreign_layouts() {
            // The links now run programs bound to this layout's maps; the old ones are unused.
            if fs::remove_dir_all(&dir).is_ok() {
                report.foreign_layouts.push(dir);
            }
        }
        Ok((enforcer, report))
    }

    /// Puts `policy` in force atomically: fills the policy maps' inactive slot, then flips
    /// `POLICY_SLOT`. Then forgets learned addresses whose rule the policy no longer has.
    ///
    /// An error means the flip did not happen: the policy in force is the previous one.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<ApplyReport, EnforceError> {
        check_size(ALLOWED_CIDRS[0], policy.cidrs.len(), ALLOWED_CIDRS_MAX)?;
        check_size(RESOLVERS[0], policy.resolvers.len(), RESOLVERS_MAX)?;
        check_size(ALLOWED_NAMES[0], policy.names.len(), ALLOWED_NAMES_MAX)?;
        let active = {
            let slot: Array<_, u32> = typed_map(&mut self.ebpf, POLICY_SLOT)?;
            slot.get(&0, 0)
                .map_err(|source| map_error(POLICY_SLOT, source))?
                & 1
        };
        let next = 1 - active;
        let index = next as usize;

        // The inactive slot, made to hold exactly the new policy (any failure stops here).
        let mut names: LpmTrie<_, [u8; NAME_BUF], NameRule> =
            typed_map(&mut self.ebpf, ALLOWED_NAMES[index])?;
        let entries = policy.names.iter();
        let entries = entries.map(|entry| (Key::new(entry.prefix_len, entry.key), entry.rule));
        refill(&mut names, ALLOWED_NAMES[index], entries)?;

        let mut cidrs: LpmTrie<_, Addr16, CidrRule> =
            typed_map(&mut self.ebpf, ALLOWED_CIDRS[index])?;
        let entries = policy.cidrs.iter();
        let entries = entries.map(|entry| (Key::new(entry.prefix_len, entry.addr), entry.rule));
        refill(&mut cidrs, ALLOWED_CIDRS[index], entries)?;

        let mut resolvers: HashMap<_, Addr16, ResolverRule> =
            typed_map(&mut self.ebpf, RESOLVERS[index])?;
        refill(&mut resolvers, RESOLVERS[index], policy.resolver_entries())?;

        let (names_kept, resolvers_kept) = policy.learned_rule_ids();
        let mut ids: HashMap<_, u64, u8> = typed_map(&mut self.ebpf, RULE_IDS[index])?;
        let entries = names_kept.iter().chain(&resolvers_kept).map(|id| (*id, 1));
        refill(&mut ids, RULE_IDS[index], entries)?;

        {
            let mut config: Array<_, PolicyConfig> = typed_map(&mut self.ebpf, POLICY_CONFIG)?;
            let value = PolicyConfig {
                trusted_netns_cookie: sys::own_netns_cookie().unwrap_or(0),
                search_seed: self.search_seed,
                ..policy.config
            };
            config
                .set(next, value, 0)
                .map_err(|source| map_error(POLICY_CONFIG, source))?;
        }
        self.sync_search_domains(&policy.search_domains)?;
        // The switch: one 4-byte array update, which every program reads once per run.
        {
            let mut slot: Array<_, u32> = typed_map(&mut self.ebpf, POLICY_SLOT)?;
            slot.set(0, next, 0)
                .map_err(|source| map_error(POLICY_SLOT, source))?;
        }

        self.kept_rules = names_kept;
        self.kept_resolvers = resolvers_kept;
        let cap = sys::boottime_ns() + policy.config.max_ttl_ns + policy.config.grace_ns;
        let learned_dropped = self.forget_learned(cap);
        self.forget_connected();
        Ok(ApplyReport {
            slot: next,
            learned_dropped,
        })
    }

    /// After a policy change: removes learned addresses of rules and resolvers the policy no
    /// longer has, and caps the others' lifetimes to `cap` (the new max_ttl + grace). Returns
    /// how many it removed.
    ///
    /// Failures are logged, not returned: the new policy is already in force, so an error from
    /// [`Self::apply`] would tell its caller the opposite. Nothing here is needed for the policy
    /// to hold — the gates already ignore learned addresses of dropped rules and resolvers
    /// (`RULE_IDS`), removing them only frees room, and [`Self::expire_learned`] retries the
    /// removal on its next round; an address left uncapped keeps the lifetime the previous
    /// policy gave it.
    fn forget_learned(&mut self, cap: u64) -> usize {
        let learned: Result<HashMap<_, LearnedKey, LearnedAddr>, _> =
            typed_map(&mut self.ebpf, LEARNED);
        let mut learned = match learned {
            Ok(learned) => learned,
            Err(err) => {
                log::warn!("after the policy change, learned addresses stay as they were: {err}");
                return 0;
            }
        };
        let mut dropped = Vec::new();
        let mut capped = Vec::new();
        for item in learned.iter() {
            let (key, value) = match item {
                Ok(item) => item,
                Err(err) => {
                    log::warn!(
                        "after the policy change, listing {LEARNED} stopped early ({err}); the \
                         rest waits for the next expiry round"
                    );
                    break;
                }
            };
            if !self.kept_rules.contains(&value.rule_id)
                || !self.kept_resolvers.contains(&value.resolver_rule_id)
            {
                dropped.push(key);
            } else if value.expires_ns > cap {
                capped.push((
                    key,
                    LearnedAddr {
                        expires_ns: cap,
                        ..value
                    },
                ));
            }
        }
        let removal = remove_keys(&mut learned, &dropped);
        let capping = overwrite_existing(&mut learned, &capped);
        for (what, cleanup) in [
            ("removing", &removal),
            ("capping the lifetime of", &capping),
        ] {
            if let Some(err) = &cleanup.first_error {
                log::warn!(
                    "after the policy change, {what} {} learned address(es) in {LEARNED} \
                     failed (first: {})",
                    cleanup.failed,
                    crate::error_chain(err)
                );
            }
        }
        removal.done
    }

    /// Enforces one more cgroup (a container that just started, a scope change). Returns
    /// whether it was new.
    pub fn enforce(&mut self, dir: &CgroupDir) -> Result<bool, EnforceError> {
        self.links.enforce(&self.ebpf, dir)
    }

    /// Stops enforcing cgroup `id`: removes its pinned links (which detaches the programs if
    /// the cgroup still exists) and forgets it.
    pub fn release(&mut self, id: u64) -> Result<(), EnforceError> {
        self.links.release(id)
    }

    /// Checks that every program is still attached to every enforced cgroup (someone may have
    /// detached a link, e.g. with `bpftool link detach`) and re-attaches what is missing.
    /// Returns one message per repair or per cgroup found removed.
    pub fn verify_attachments(&mut self) -> Vec<String> {
        self.links.verify(&self.ebpf)
    }

    /// The enforced cgroups (path, id, still there).
    pub fn cgroups(&self) -> Vec<(PathBuf, u64, bool)> {
        self.links.cgroups()
    }

    /// Capacity of `LEARNED` (the pinned map's, which may predate the policy).
    pub fn learned_capacity(&self) -> u32 {
        self.learned_capacity
    }

    /// Per-counter totals over all CPUs, indexed like [`Counter::ALL`].
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], EnforceError> {
        let counters: PerCpuArray<_, u64> = typed_map_ref(&self.ebpf, COUNTERS)?;
        let mut totals = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let values = counters
                .get(&(counter as u32), 0)
                .map_err(|source| map_error(COUNTERS, source))?;
            totals[counter as usize] = values.iter().sum();
        }
        Ok(totals)
    }

    /// Removes learned addresses that expired before `now_boot_ns` (CLOCK_BOOTTIME, the
    /// programs' clock), and those whose rule or resolver the policy in force does not have
    /// (an answer judged under the previous policy just before a change can land after
    /// [`Self::apply`] cleaned up; the gates ignore such entries already). Frees room only:
    /// the gates check expiry themselves. Returns how many were removed and how many remain;
    /// an error if a removal failed (other than for an address the kernel removed meanwhile),
    /// after trying them all.
    pub fn expire_learned(&mut self, now_boot_ns: u64) -> Result<(usize, usize), EnforceError> {
        let mut learned: HashMap<_, LearnedKey, LearnedAddr> = typed_map(&mut self.ebpf, LEARNED)?;
        let mut expired = Vec::new();
        let mut total = 0;
        for item in learned.iter() {
            let (key, value) = item.map_err(|source| map_error(LEARNED, source))?;
            total += 1;
            if value.expires_ns <= now_boot_ns
                || !self.kept_rules.contains(&value.rule_id)
                || !self.kept_resolvers.contains(&value.resolver_rule_id)
            {
                expired.push(key);
            }
        }
        let removal = remove_keys(&mut learned, &expired);
        if let Some(source) = removal.first_error {
            return Err(map_error(LEARNED, source));
        }
        self.forget_connected();
        self.release_judged_sockets();
        Ok((removal.done, total - removal.done))
    }

    /// Takes the sockets whose TLS hello was allowed out of `TLS_SOCKETS`, so that their sends
    /// take the kernel's usual path again (`tls_hello` cannot do it itself). Their flows stay
    /// (the egress check passes an allowed flow's data). Failures are logged: the socket then
    /// stays judged, and passes (the program lets an allowed flow through at once).
    fn release_judged_sockets(&mut self) {
        let Ok(flows) = typed_map_ref::<HashMap<_, FlowKey, TlsFlow>>(&self.ebpf, TLS_FLOWS) else {
            return;
        };
        let allowed: HashSet<FlowKey> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, flow)| flow.state == TLS_ALLOWED)
            .map(|(key, _)| key)
            .collect();
        let Ok(mut sockets) = typed_map::<SockHash<_, FlowKey>>(&mut self.ebpf, TLS_SOCKETS) else {
            return;
        };
        for key in allowed.difference(&self.released_sockets) {
            match sockets.remove(key) {
                Ok(()) => {}
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => log::debug!("releasing a judged socket from {TLS_SOCKETS}: {err}"),
            }
        }
        self.released_sockets = allowed;
    }

    /// Empties `CONNECTED_UDP`: the backstop then judges each connected UDP or ping socket's
    /// next packet in full again, under the policy in force and what is learned now (a
    /// socket's note would otherwise outlive the address's expiry or a policy change).
    /// Failures are logged: the notes only spare lookups.
    fn forget_connected(&mut self) {
        let Ok(mut connected) =
            typed_map::<HashMap<_, u64, ConnectedDest>>(&mut self.ebpf, CONNECTED_UDP)
        else {
            return;
        };
        let keys: Vec<u64> = connected.keys().filter_map(Result::ok).collect();
        if let Some(err) = remove_keys(&mut connected, &keys).first_error {
            log::debug!("emptying {CONNECTED_UDP}: {err}");
        }
    }

    /// Makes `NETNS_RESOLVERS` hold exactly `wanted` (network namespace cookie, resolver) by
    /// difference — an entry that stays is never removed, even for a moment. Returns how many
    /// were added and removed; an error after trying every change.
    pub fn sync_container_resolvers(
        &mut self,
        wanted: &HashSet<NetnsResolverKey>,
    ) -> Result<(usize, usize), EnforceError> {
        check_size(NETNS_RESOLVERS, wanted.len(), NETNS_RESOLVERS_MAX)?;
        let mut map: HashMap<_, NetnsResolverKey, ResolverRule> =
            typed_map(&mut self.ebpf, NETNS_RESOLVERS)?;
        let present: HashSet<NetnsResolverKey> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(NETNS_RESOLVERS, source))?;
        let stale: Vec<NetnsResolverKey> = present.difference(wanted).copied().collect();
        let rule = ResolverRule {
            rule_index: BUILTIN_RULE,
            _reserved: 0,
            rule_id: CONTAINER_RESOLVER_RULE_ID,
        };
        let mut first_error = None;
        let mut added = 0;
        for key in wanted.difference(&present) {
            match map.insert(key, rule, 0) {
                Ok(()) => added += 1,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let removal = remove_keys(&mut map, &stale);
        match first_error.or(removal.first_error) {
            Some(source) => Err(map_error(NETNS_RESOLVERS, source)),
            None => Ok((added, removal.done)),
        }
    }

    /// Makes `SEARCH_DOMAINS` hold the hashes of exactly `domains`, adding before removing.
    fn sync_search_domains(&mut self, domains: &[String]) -> Result<(), EnforceError> {
        check_size(SEARCH_DOMAINS, domains.len(), SEARCH_DOMAINS_MAX)?;
        let mut map: HashMap<_, u64, u8> = typed_map(&mut self.ebpf, SEARCH_DOMAINS)?;
        let wanted: HashSet<u64> = domains
            .iter()
            .map(|domain| suffix_hash(self.search_seed, domain.as_bytes()))
            .collect();
        let present: HashSet<u64> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(SEARCH_DOMAINS, source))?;
        for hash in wanted.difference(&present) {
            map.insert(hash, 1, 0)
                .map_err(|source| map_error(SEARCH_DOMAINS, source))?;
        }
        let stale: Vec<u64> = present.difference(&wanted).copied().collect();
        let removal = remove_keys(&mut map, &stale);
        match removal.first_error {
            Some(source) => Err(map_error(SEARCH_DOMAINS, source)),
            None => Ok(()),
        }
    }

    /// Whether the kernel holds `key` in LEARNED (and until when).
    pub fn learned_entry(&self, key: &LearnedKey) -> Option<LearnedAddr> {
        let learned: HashMap<_, LearnedKey, LearnedAddr> =
            typed_map_ref(&self.ebpf, LEARNED).ok()?;
        learned.get(key, 0).ok()
    }

    /// Of `names` (the allowed names the daemon saw answer with `key.addr`), those whose
    /// answer taught the address to `key.cgroup_id`, as `TAUGHT_NAMES` says (written while
    /// `registry_access.tls` is on); all of them when the map has no lesson for the address.
    pub fn taught_names(
        &self,
        key: &LearnedKey,
        names: Vec<String>,
        now_boot_ns: u64,
    ) -> Vec<String> {
        let Ok(taught) = typed_map_ref::<HashMap<_, TaughtKey, u64>>(&self.ebpf, TAUGHT_NAMES)
        else {
            return names;
        };
        let lesson = |name: &String| TaughtKey {
            cgroup_id: key.cgroup_id,
            addr: key.addr,
            name_hash: name_hash(name.as_bytes()),
        };
        let kept: Vec<String> = names
            .iter()
            .filter(|name| {
                taught
                    .get(&lesson(name), 0)
                    .is_ok_and(|expires| expires > now_boot_ns)
            })
            .cloned()
            .collect();
        if kept.is_empty() { names } else { kept }
    }

    /// Every learned address (for `ram learned` and fill levels).
    pub fn learned_entries(&self) -> Result<Vec<(LearnedKey, LearnedAddr)>, EnforceError> {
        let learned: HashMap<_, LearnedKey, LearnedAddr> = typed_map_ref(&self.ebpf, LEARNED)?;
        learned
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(LEARNED, source))
    }

    /// Instructions the verifier processed per program (kernels 5.16+), for the README table.
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        program_names()
            .map(|name| {
                let count = self
                    .ebpf
                    .program(name)
                    .and_then(|program| program.info().ok())
                    .and_then(|info| info.verified_instruction_count());
                (name, count)
            })
            .collect()
    }

    /// The ring buffer of learning events (with the answers); call once.
    pub fn take_dns_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        self.take_ring(DNS_EVENTS)
    }

    /// The ring buffer of judged TLS hellos; call once.
    pub fn take_tls_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        self.take_ring(TLS_EVENTS)
    }

    /// The ring buffer of denial events; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        self.take_ring(GATE_EVENTS)
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, EnforceError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(EnforceError::MissingMap { map: name })?;
        RingBuf::try_from(map).map_err(|source| map_error(name, source))
    }
}
