//! The handed-out table: which addresses the server gave the guest, for
//! which names, until when. In `filtered` mode the stack lets a guest
//! flow reach an address only while this table names it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use crate::Policy;

/// Addresses remembered at most (the oldest go first beyond).
const MAX_ADDRS: usize = 4096;
/// Names remembered per address (CDN addresses serve many names).
const MAX_NAMES_PER_ADDR: usize = 8;

/// One name an address was handed out for.
#[derive(Debug)]
struct Entry {
    name: String,
    expires: Instant,
    /// Handed out as the name's `hosts` pin (not from upstream).
    pinned: bool,
}

/// Addresses handed out, each with the names it was handed out for.
#[derive(Debug, Default)]
pub(super) struct HandedOut {
    by_addr: HashMap<Ipv4Addr, Vec<Entry>>,
}

impl HandedOut {
    /// Remembers that `ip` was handed out for `name` until `expires`
    /// (keeping a later expiry already known), `pinned` if it is the
    /// name's `hosts` pin.
    pub fn record(
        &mut self,
        now: Instant,
        ip: Ipv4Addr,
        name: &str,
        expires: Instant,
        pinned: bool,
    ) {
        if !self.by_addr.contains_key(&ip) && self.by_addr.len() >= MAX_ADDRS {
            self.prune(now);
            if self.by_addr.len() >= MAX_ADDRS {
                self.evict_oldest();
            }
        }
        let names = self.by_addr.entry(ip).or_default();
        if let Some(entry) = names.iter_mut().find(|e| e.name == name) {
            entry.expires = entry.expires.max(expires);
            entry.pinned |= pinned;
            return;
        }
        if names.len() >= MAX_NAMES_PER_ADDR {
            let soonest = names.iter().enumerate().min_by_key(|(_, e)| e.expires);
            if let Some((i, _)) = soonest {
                names.swap_remove(i);
            }
        }
        names.push(Entry {
            name: name.to_owned(),
            expires,
            pinned,
        });
    }

    /// A name `ip` was handed out for (and has not expired): a pinned one
    /// first (so a public name resolving to a pinned address does not hide
    /// the pin), else the one that expires last.
    pub fn name_for(&self, ip: Ipv4Addr, now: Instant) -> Option<&str> {
        self.by_addr
            .get(&ip)?
            .iter()
            .filter(|e| e.expires > now)
            .max_by_key(|e| (e.pinned, e.expires))
            .map(|e| e.name.as_str())
    }

    /// Whether `ip` was handed out for `name` and has not expired since.
    pub fn was_handed_out(&self, ip: Ipv4Addr, name: &str, now: Instant) -> bool {
        self.by_addr
            .get(&ip)
            .is_some_and(|names| names.iter().any(|e| e.name == name && e.expires > now))
    }

    /// Forgets what expired.
    pub fn prune(&mut self, now: Instant) {
        self.retain(|_, entry| entry.expires > now);
    }

    /// Forgets the names `policy` does not allow, and the addresses of
    /// names pinned elsewhere now (or no longer pinned).
    pub fn retain_allowed(&mut self, policy: &Policy) {
        self.retain(|ip, entry| {
            policy.allows_name(&entry.name)
                && match policy.pinned(&entry.name) {
                    Some(pin) => pin == ip,
                    None => !entry.pinned,
                }
        });
    }

    fn retain(&mut self, mut keep: impl FnMut(Ipv4Addr, &Entry) -> bool) {
        self.by_addr.retain(|ip, names| {
            names.retain(|entry| keep(*ip, entry));
            !names.is_empty()
        });
    }

    /// Drops the address whose last name expires first.
    fn evict_oldest(&mut self) {
        let last_expiry = |names: &Vec<Entry>| names.iter().map(|e| e.expires).max();
        let oldest = self
            .by_addr
            .iter()
            .min_by_key(|(_, names)| last_expiry(names))
            .map(|(ip, _)| *ip);
        if let Some(ip) = oldest {
            self.by_addr.remove(&ip);
        }
    }
}
