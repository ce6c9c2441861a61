//! Free-form request fields (`metadata`, `inputs`, `tools`, message content, …) parsed
//! into `serde_json::Value` with their memory bounded. A `Value` tree costs far more than
//! its text: `{"a":0}` is 7 bytes on the wire and about 700 bytes parsed (a map node, a
//! key, a slot), so 6 MiB of tiny values would take over half a gigabyte. Each parse gets
//! a structure allowance ([`STRUCTURE_ALLOWANCE`]); every array slot, object node and
//! string header built here is charged to it (string bytes are not: they are bounded by
//! the body's own bytes, which the route's parse budget counts), and the parse fails,
//! naming the field, once the allowance is spent. Fields a request does not use are
//! never built: serde skips unknown fields without allocating.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The structure one request's free-form fields may build, estimated as bytes of heap.
/// Open WebUI's ~20 KB `tools` array with its `metadata` and a long history takes a few
/// hundred KiB; 4 MiB leaves room for ten times that.
pub const STRUCTURE_ALLOWANCE: usize = 4 * 1024 * 1024;

/// Most content parts one message may have.
pub const MAX_CONTENT_PARTS: usize = 1000;

/// What a parse of `body_len` bytes may hold at most: the body, its strings copied out
/// of it, and the structure allowance. The weight a parse takes from the process's
/// parse budget.
pub fn parse_weight(body_len: usize) -> usize {
    body_len
        .saturating_mul(2)
        .saturating_add(STRUCTURE_ALLOWANCE)
}

// Estimated heap of the pieces of a `Value` on a 64-bit target.
/// An element's slot in its array, doubled for the vector's growth.
const SLOT: usize = 2 * std::mem::size_of::<Value>();
/// A B-tree node of a map (up to 11 entries), allocated with the first entry and then
/// about once per 11 more.
const MAP_NODE: usize = 640;
/// A map entry's share of its node, and a key's allocation header.
const ENTRY: usize = 64;
/// The smallest allocation of a non-empty string.
const STRING: usize = 32;

thread_local! {
    /// What the parse running on this thread may still build; `None` outside a bounded
    /// parse (unit tests building requests from `json!`).
    static REMAINING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `parse` with `allowance` bytes of structure for its free-form fields. Parsing is
/// synchronous, so a thread-local budget follows exactly one parse.
pub fn with_allowance<R>(allowance: usize, parse: impl FnOnce() -> R) -> R {
    let previous = REMAINING.with(|r| r.replace(Some(allowance)));
    let result = parse();
    REMAINING.with(|r| r.set(previous));
    result
}

fn charge<E: de::Error>(cost: usize) -> Result<(), E> {
    REMAINING.with(|r| match r.get() {
        None => Ok(()),
        Some(left) if left >= cost => {
            r.set(Some(left - cost));
            Ok(())
        }
        Some(_) => {
            r.set(Some(0));
            Err(E::custom(format!(
                "the request's JSON has more objects and arrays than one request may hold (about {} MiB of parsed structure): send fewer or smaller values",
                STRUCTURE_ALLOWANCE / (1024 * 1024)
            )))
        }
    })
}

/// Builds a `Value`, charging each piece. `max_items` caps the top-level array's length
/// (content parts); `what` names the limit in the error.
#[derive(Clone, Copy)]
struct Bounded {
    max_items: Option<(usize, &'static str)>,
}

const ANY: Bounded = Bounded { max_items: None };

impl<'de> DeserializeSeed<'de> for Bounded {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        charge(if v.is_empty() { 0 } else { STRING })?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        charge(if v.is_empty() { 0 } else { STRING })?;
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            if let Some((max, what)) = self.max_items
                && items.len() == max
            {
                // One more element is an error; the check reads only its start.
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "more than {max} {what}: send at most {max}"
                    )));
                }
                break;
            }
            charge::<A::Error>(SLOT)?;
            match seq.next_element_seed(ANY)? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let node = if map.len().is_multiple_of(11) {
                MAP_NODE
            } else {
                0
            };
            charge::<A::Error>(node + ENTRY)?;
            let value = access.next_value_seed(ANY)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// `#[serde(deserialize_with)]` for an optional free-form field: any JSON, bounded.
pub fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    match ANY.deserialize(d)? {
        Value::Null => Ok(None),
        v => Ok(Some(v)),
    }
}

/// A message's `content`: a string, an array of at most [`MAX_CONTENT_PARTS`] parts, or
/// null; bounded like [`value`]. Other types are left to the planner, which names them.
pub fn content<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let seed = Bounded {
        max_items: Some((MAX_CONTENT_PARTS, "content parts in one message")),
    };
    match seed.deserialize(d)? {
        Value::Null => Ok(None),
        v => Ok(Some(v)),
    }
}

/// An optional JSON object (`metadata`): anything else is a type error naming the field.
pub fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    match ANY.deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        other => Err(de::Error::invalid_type(
            unexpected(&other),
            &"a JSON object",
        )),
    }
}

/// An optional array of free-form items (Responses `tools`).
pub fn array<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Value>>, D::Error> {
    match ANY.deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => Ok(Some(items)),
        other => Err(de::Error::invalid_type(unexpected(&other), &"an array")),
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => de::Unexpected::Unsigned(u),
            (_, Some(i), _) => de::Unexpected::Signed(i),
            (_, _, Some(f)) => de::Unexpected::Float(f),
            _ => de::Unexpected::Other("number"),
        },
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

/// A list of typed items (`messages`), each charged its size and slot: a list of
/// thousands of tiny items costs its allowance, not unbounded memory.
pub fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    struct List<T>(std::marker::PhantomData<T>);
    impl<'de, T: de::Deserialize<'de>> Visitor<'de> for List<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            loop {
                charge::<A::Error>(2 * std::mem::size_of::<T>())?;
                match seq.next_element()? {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            Ok(items)
        }
    }
    d.deserialize_seq(List(std::marker::PhantomData))
}

/// `user` in chat completions: a string (the SDKs), or an object with a string `id` (Open
/// WebUI pipelines), kept as `{"id": …}`; null is absent. Anything else is a type error.
pub fn end_user<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    struct User;
    impl<'de> Visitor<'de> for User {
        type Value = Option<Value>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string, or an object with a string `id`")
        }

        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Value::String(v.to_owned())))
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut id = None;
            while let Some(key) = access.next_key::<String>()? {
                if key == "id" {
                    id = Some(access.next_value::<String>()?);
                } else {
                    access.next_value::<de::IgnoredAny>()?;
                }
            }
            Ok(id.map(|id| {
                let mut o = Map::new();
                o.insert("id".into(), Value::String(id));
                Value::Object(o)
            }))
        }
    }
    d.deserialize_any(User)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "value")]
        v: Option<Value>,
        #[serde(default, deserialize_with = "content")]
        c: Option<Value>,
        #[serde(default, deserialize_with = "object")]
        o: Option<Map<String, Value>>,
        #[serde(default, deserialize_with = "end_user")]
        u: Option<Value>,
    }

    fn parse(json: &str, allowance: usize) -> Result<Probe, String> {
        with_allowance(allowance, || {
            serde_json::from_str::<Probe>(json).map_err(|e| e.to_string())
        })
    }

    #[test]
    fn values_round_trip_within_the_allowance() {
        let p = parse(
            r#"{"v":{"a":[1,-2,3.5,"x",true,null,{"b":{}}]},"o":{"k":"v"},"c":"hi","u":"alice"}"#,
            STRUCTURE_ALLOWANCE,
        )
        .unwrap();
        assert_eq!(
            p.v.unwrap(),
            serde_json::json!({"a":[1,-2,3.5,"x",true,null,{"b":{}}]})
        );
        assert_eq!(p.o.unwrap()["k"], "v");
        assert_eq!(p.c.unwrap(), "hi");
        assert_eq!(p.u.unwrap(), "alice");
    }

    #[test]
    fn tiny_values_spend_the_allowance() {
        let many: Vec<&str> = std::iter::repeat_n(r#"{"a":0}"#, 10_000).collect();
        let json = format!(r#"{{"v":{{"x":[{}]}}}}"#, many.join(","));
        let err = parse(&json, STRUCTURE_ALLOWANCE).unwrap_err();
        assert!(
            err.contains("more objects and arrays than one request may hold"),
            "{err}"
        );
        // Unbounded outside a bounded parse, and within a large enough allowance.
        assert!(serde_json::from_str::<Probe>(&json).is_ok());
        assert!(parse(&json, 100 * STRUCTURE_ALLOWANCE).is_ok());
    }

    #[test]
    fn content_parts_are_counted() {
        let parts = |n| {
            let v: Vec<&str> = std::iter::repeat_n(r#""""#, n).collect();
            format!(r#"{{"c":[{}]}}"#, v.join(","))
        };
        assert!(parse(&parts(MAX_CONTENT_PARTS), STRUCTURE_ALLOWANCE).is_ok());
        let err = parse(&parts(MAX_CONTENT_PARTS + 1), STRUCTURE_ALLOWANCE).unwrap_err();
        assert!(err.contains("more than 1000 content parts"), "{err}");
    }

    #[test]
    fn types_are_checked() {
        assert!(
            parse(r#"{"o":[1]}"#, STRUCTURE_ALLOWANCE)
                .unwrap_err()
                .contains("expected a JSON object")
        );
        assert!(parse(r#"{"o":null,"u":null}"#, STRUCTURE_ALLOWANCE).is_ok());
        for bad in [r#"[]"#, r#"42"#, r#"true"#] {
            let err = parse(&format!(r#"{{"u":{bad}}}"#), STRUCTURE_ALLOWANCE).unwrap_err();
            assert!(
                err.contains("a string, or an object with a string `id`"),
                "{err}"
            );
        }
        let err = parse(r#"{"u":{"id":1}}"#, STRUCTURE_ALLOWANCE).unwrap_err();
        assert!(
            err.contains("invalid type: integer `1`, expected a string"),
            "{err}"
        );
        let p = parse(
            r#"{"u":{"id":"u-1","name":"Ann","info":{"deep":[1,2]}}}"#,
            STRUCTURE_ALLOWANCE,
        )
        .unwrap();
        assert_eq!(p.u.unwrap(), serde_json::json!({"id":"u-1"}));
    }
}
