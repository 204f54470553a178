//! [`Watchers`]: the prefix watches of [`crate::Store::watch`], shared by
//! the backends so that each wakes exactly the watchers a commit concerns.

use std::sync::Mutex;
use tokio::sync::watch;

/// One channel per watched prefix; a commit sends its index to the
/// channels whose prefix one of its keys starts with.
#[derive(Debug, Default)]
pub struct Watchers {
    channels: Mutex<Vec<(String, watch::Sender<u64>)>>,
}

impl Watchers {
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver for `prefix`. A prefix watched already shares its channel
    /// (and its last value); a new one starts at `current`, the store's
    /// index now, which is at least the index of the last write under it.
    pub fn subscribe(&self, prefix: &str, current: u64) -> watch::Receiver<u64> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, sender)) = channels.iter().find(|(p, _)| p == prefix) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(current);
        channels.push((prefix.to_string(), sender));
        receiver
    }

    /// Tells the watchers of every prefix that one of `keys` starts with
    /// that a commit at `index` wrote under it. Backends call this once per
    /// commit, in index order (under their write lock), so a watcher never
    /// sees its index go back. Channels nobody listens to any more are dropped.
    pub fn notify<'a>(&self, index: u64, keys: impl IntoIterator<Item = &'a str>) {
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.retain(|(_, sender)| sender.receiver_count() > 0);
        for (prefix, sender) in channels.iter() {
            if keys.iter().any(|k| k.starts_with(prefix.as_str())) {
                sender.send_replace(index);
            }
        }
    }

    /// Tells every watcher that the store is at `index` now, for a backend
    /// that lost track of which prefixes changed (a distributed store whose
    /// history was compacted away while it was not following).
    pub fn notify_all(&self, index: u64) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.retain(|(_, sender)| sender.receiver_count() > 0);
        for (_, sender) in channels.iter() {
            sender.send_if_modified(|current| {
                let newer = index > *current;
                *current = (*current).max(index);
                newer
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matching_prefixes_wake() {
        let watchers = Watchers::new();
        let mut ca = watchers.subscribe("ca/", 3);
        let mut acl = watchers.subscribe("acl/", 3);
        assert_eq!(*ca.borrow_and_update(), 3);
        watchers.notify(4, ["acl/token/x"]);
        assert!(!ca.has_changed().unwrap());
        assert!(acl.has_changed().unwrap());
        assert_eq!(*acl.borrow_and_update(), 4);
        watchers.notify(5, ["ca/keys", "acl/policy/y"]);
        assert_eq!(*ca.borrow_and_update(), 5);
        assert_eq!(*acl.borrow_and_update(), 5);
        let mut again = watchers.subscribe("ca/", 9);
        assert_eq!(*again.borrow_and_update(), 5, "shares the prefix's channel");
    }

    #[test]
    fn notify_all_wakes_every_prefix_and_never_goes_back() {
        let watchers = Watchers::new();
        let mut ca = watchers.subscribe("ca/", 3);
        let mut acl = watchers.subscribe("acl/", 3);
        watchers.notify(8, ["acl/token/x"]);
        acl.borrow_and_update();
        watchers.notify_all(6);
        assert_eq!(*ca.borrow_and_update(), 6);
        assert!(!acl.has_changed().unwrap(), "6 is older than acl's 8");
        assert_eq!(*acl.borrow(), 8);
    }

    #[test]
    fn abandoned_channels_are_dropped() {
        let watchers = Watchers::new();
        drop(watchers.subscribe("ca/", 0));
        watchers.notify(1, ["ca/keys"]);
        assert!(watchers.channels.lock().unwrap().is_empty());
    }
}
