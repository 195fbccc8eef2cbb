//! A small ordered map on a sorted `Vec`: the same API subset as `BTreeMap`, the same
//! iteration order and the same JSON form (an object, keys in order; reading keeps the last
//! of repeated keys), for maps of a few entries: the topics of one `subscribe`, a client's
//! pending requests.
//!
//! Exists for size: every `BTreeMap<K, V>` instantiation brings several KB of node, balancing
//! and drop code into the browser SDK's wasm; this one is a binary search and a `Vec`
//! insert/remove. Lookups are O(log n), inserts O(n): fine for the sizes it holds (a
//! `subscribe` carries at most the server's per-connection subscription limit).

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

/// A map keyed by topic (or stream) name, as the protocol's messages carry them.
pub type TopicMap<V> = VecMap<String, V>;

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// Insert, returning the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, inserting `make()` first if there is none.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key, make()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, mutably.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Remove `key`, returning its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Keep the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Entries in key order, values mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Values in key order, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// Values in key order, by value.
    pub fn into_values(self) -> impl Iterator<Item = V> {
        self.entries.into_iter().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Remove and return the entry with the smallest key.
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        if self.entries.is_empty() {
            None
        } else {
            Some(self.entries.remove(0))
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// The map of `entries` in any order, later entries replacing earlier ones with the same
    /// key (as `BTreeMap` fills): one stable sort, O(n log n) whatever the order, where `n`
    /// inserts could take O(n²) moves for entries in reverse order (a peer's frame).
    pub fn from_entries(mut entries: Vec<(K, V)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match out.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => out.push(entry),
            }
        }
        VecMap { entries: out }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// Later entries replace earlier ones with the same key, as `BTreeMap` does.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_entries(iter.into_iter().collect())
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads a JSON object into the map, the last of repeated keys winning.
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = VecMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(VecMap::from_entries(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for VecMap<K, V> {
    type Output = V;

    /// The value of `key`, as `BTreeMap`'s index.
    ///
    /// # Panics
    /// When `key` is absent (use [`VecMap::get`] where it may be).
    fn index(&self, key: &Q) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no entry for the key"),
        }
    }
}

/// `(&key, &value)` of one entry.
type EntryRef<'a, K, V> = (&'a K, &'a V);

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = EntryRef<'a, K, V>;
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> EntryRef<'a, K, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut m = VecMap::new();
        assert_eq!(m.insert("b".to_owned(), 2), None);
        assert_eq!(m.insert("a".to_owned(), 1), None);
        assert_eq!(m.insert("c".to_owned(), 3), None);
        assert_eq!(m.insert("b".to_owned(), 20), Some(2));
        assert_eq!(
            m.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(m.get("b"), Some(&20));
        assert!(m.contains_key("c") && !m.contains_key("d"));
        *m.get_or_insert_with("d".to_owned(), || 0) += 4;
        *m.get_or_insert_with("a".to_owned(), || 0) += 10;
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [11, 20, 3, 4]);
        assert_eq!(m.remove("c"), Some(3));
        assert_eq!(m.remove("c"), None);
        m.retain(|_, v| *v > 10);
        assert_eq!(m.len(), 2);
        assert_eq!(m.into_values().collect::<Vec<_>>(), [11, 20]);
    }

    /// The JSON form is `BTreeMap`'s: an object in key order; repeated keys keep the last.
    #[test]
    fn reads_and_writes_json_as_a_btree_map_does() {
        use std::collections::BTreeMap;
        for text in [
            r#"{}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2,"c":3}"#,
            r#"{"z":0,"m":5,"a":9,"m":6}"#,
        ] {
            let ours: VecMap<String, u32> = serde_json::from_str(text).expect("reads");
            let theirs: BTreeMap<String, u32> = serde_json::from_str(text).expect("reads");
            assert_eq!(
                serde_json::to_string(&ours).expect("writes"),
                serde_json::to_string(&theirs).expect("writes"),
                "{text}"
            );
        }
        assert!(serde_json::from_str::<VecMap<String, u32>>("[]").is_err());
        // Many keys in reverse order (a hostile `since`): one sort, not n inserts.
        let text = format!(
            "{{{}}}",
            (0..50_000)
                .rev()
                .map(|i| format!("\"{i:06}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let big: VecMap<String, u32> = serde_json::from_str(&text).expect("reads");
        assert_eq!(big.len(), 50_000);
        assert_eq!(big.keys().next().map(String::as_str), Some("000000"));
        let mut m: VecMap<String, u32> = [("b".to_owned(), 1), ("a".to_owned(), 2)]
            .into_iter()
            .collect();
        assert_eq!(m.pop_first(), Some(("a".to_owned(), 2)));
        assert_eq!(m.pop_first(), Some(("b".to_owned(), 1)));
        assert_eq!(m.pop_first(), None);
    }
}
