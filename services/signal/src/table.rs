//! Hash maps under churn: entries added and removed at about the same rate around a population
//! that stays put (peers, sockets, per-IP counts while clients come and go).
//!
//! std's `HashMap` leaves some removed slots as tombstones. When they use up its spare room
//! and the map is more than half full, it doubles instead of clearing them, so under connect
//! churn each table of a steady population doubles once, at a random time minutes into the run
//! (`bench/soak.sh` saw RSS step up ~1.5 MiB three or four times an hour at 10,000 peers).
//! [`make_room`], called before an insert, rebuilds a table whose room is gone at the size its
//! live entries need plus a quarter, so its size follows the population, not the churn. A
//! rebuild moves every entry and buys at least a quarter of the population in inserts before
//! the next one: O(1) amortised per insert.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Call before inserting `key` into `map`.
pub(crate) fn make_room<K: Eq + Hash, V, S: BuildHasher + Clone>(
    map: &mut HashMap<K, V, S>,
    key: &K,
) {
    // capacity() is live entries plus the room left: equal means the next new key would
    // make std grow (or clean) the table itself.
    if map.len() < map.capacity() || map.contains_key(key) {
        return;
    }
    let live = map.len();
    let mut fresh = HashMap::with_capacity_and_hasher(live + live / 4 + 1, map.hasher().clone());
    fresh.extend(map.drain());
    *map = fresh;
}

#[cfg(test)]
mod tests {
    use super::make_room;
    use std::collections::{HashMap, VecDeque};

    /// 10,000 steady entries and a million churned ones, 20 open at a time: std's table
    /// doubles; with `make_room` it keeps the size the population needs.
    #[test]
    fn churn_does_not_grow_the_table() {
        let mut plain: HashMap<u64, u64> = HashMap::new();
        let mut kept: HashMap<u64, u64> = HashMap::new();
        for i in 0..10_000 {
            plain.insert(i, i);
            make_room(&mut kept, &i);
            kept.insert(i, i);
        }
        let start = kept.capacity();
        let (mut plain_max, mut kept_max) = (plain.capacity(), start);
        let mut open = VecDeque::new();
        for k in 1_000_000..2_000_000u64 {
            plain.insert(k, k);
            make_room(&mut kept, &k);
            kept.insert(k, k);
            open.push_back(k);
            if open.len() > 20
                && let Some(old) = open.pop_front()
            {
                plain.remove(&old);
                kept.remove(&old);
            }
            plain_max = plain_max.max(plain.capacity());
            kept_max = kept_max.max(kept.capacity());
        }
        assert_eq!(plain.len(), kept.len());
        assert!(
            plain_max >= 2 * start,
            "std's table did not double: {plain_max}"
        );
        assert_eq!(kept_max, start, "the kept table grew under churn");
    }

    /// A growing population still grows the table.
    #[test]
    fn follows_the_population() {
        let mut m: HashMap<u64, ()> = HashMap::new();
        for i in 0..100_000 {
            make_room(&mut m, &i);
            m.insert(i, ());
        }
        assert_eq!(m.len(), 100_000);
        assert!(m.capacity() >= 100_000);
    }

    /// Replacing a key is not an insert of a new one: no rebuild.
    #[test]
    fn existing_key_is_left_alone() {
        let mut m: HashMap<u64, u64> = HashMap::with_capacity(3);
        for i in 0..m.capacity() as u64 {
            m.insert(i, i);
        }
        let cap = m.capacity();
        make_room(&mut m, &0);
        assert_eq!(m.capacity(), cap);
    }
}
