//! A manifest's engine-specific `facts`: what an engine records about its source beyond
//! parts and counts (a Vault cluster's raft index, ClickHouse's TTL tables, a command's
//! argv). Each engine reads and writes them as its own serde struct through [`Facts::read`]
//! and [`Facts::of`]; on the wire they stay what format 1 defines, a JSON object of string
//! values, so manifests of every earlier version read and older readers read new ones.
//! Numbers are written as decimal text ([`text`]) and lists or maps as JSON text
//! ([`json_text`]).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The facts as stored: names to string values. Unknown names are kept (and written back)
/// untouched, so facts of a newer worker survive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Facts(BTreeMap<String, String>);

/// Facts that do not have the shape an engine's struct expects.
#[derive(Debug, thiserror::Error)]
#[error("the manifest's facts are not what this engine wrote: {0}; the backup may be from a newer worker (upgrade kubectl-dr) or edited by hand")]
pub struct FactsError(String);

impl Facts {
    /// Facts from an engine's typed struct.
    ///
    /// # Panics
    /// When `typed` does not serialize to an object of strings: a programming error in the
    /// engine's struct (every field must be a string or use [`text`] or [`json_text`]),
    /// caught by each engine's round-trip test.
    pub fn of<T: Serialize>(typed: &T) -> Facts {
        let value = serde_json::to_value(typed).expect("facts serialize");
        let serde_json::Value::Object(map) = value else {
            panic!("facts must be a struct, got {value}");
        };
        Facts(
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    // Skipped optional facts.
                    serde_json::Value::Null => None,
                    other => panic!("fact {k} must serialize to a string, got {other}"),
                })
                .collect(),
        )
    }

    /// The facts as an engine's typed struct.
    ///
    /// # Errors
    /// A fact whose text does not parse as the struct's field (a hand-edited manifest).
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, FactsError> {
        let map = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| FactsError(e.to_string()))
    }

    /// One fact's stored text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether no fact is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every stored fact, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Facts {
    fn from(pairs: [(&str, &str); N]) -> Self {
        Facts(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// `#[serde(with = "text")]`: a value stored as its `Display` text (`"35"` for 35), read
/// back with `FromStr`. Use with `Option` through [`text::option`].
pub mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the value's text.
    ///
    /// # Errors
    /// Never, beyond the serializer's own.
    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// Parses the text.
    ///
    /// # Errors
    /// Text that does not parse as `T`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }

    /// The same for an optional fact (absent when `None`; pair with
    /// `skip_serializing_if = "Option::is_none"` and `default`).
    pub mod option {
        use super::*;

        /// Writes the value's text, or nothing.
        ///
        /// # Errors
        /// Never, beyond the serializer's own.
        pub fn serialize<T: Display, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }

        /// Parses the text when present.
        ///
        /// # Errors
        /// Text that does not parse as `T`.
        pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
        where
            T: FromStr,
            T::Err: Display,
            D: Deserializer<'de>,
        {
            match Option::<String>::deserialize(d)? {
                Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// `#[serde(with = "json_text")]`: a list or map stored as its compact JSON text.
pub mod json_text {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the value as JSON text.
    ///
    /// # Errors
    /// A value that does not serialize to JSON.
    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    /// Parses the JSON text.
    ///
    /// # Errors
    /// Text that is not JSON of the expected shape.
    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "text")]
        index: u64,
        #[serde(
            default,
            with = "text::option",
            skip_serializing_if = "Option::is_none"
        )]
        term: Option<u64>,
        #[serde(default, with = "json_text")]
        argv: Vec<String>,
        name: String,
    }

    #[test]
    fn typed_facts_are_strings_on_the_wire_and_read_back() {
        let typed = Sample {
            index: 35,
            term: None,
            argv: vec!["tar".into(), "-cf".into(), "-".into()],
            name: "c-1".into(),
        };
        let facts = Facts::of(&typed);
        let json = serde_json::to_string(&facts).unwrap();
        assert_eq!(
            json,
            r#"{"argv":"[\"tar\",\"-cf\",\"-\"]","index":"35","name":"c-1"}"#
        );
        assert_eq!(facts.read::<Sample>().unwrap(), typed);
    }

    #[test]
    fn unknown_facts_are_kept_and_bad_ones_are_an_error() {
        let facts: Facts =
            serde_json::from_str(r#"{"index":"7","name":"x","from_the_future":"y"}"#).unwrap();
        assert_eq!(facts.read::<Sample>().unwrap().index, 7);
        assert_eq!(facts.get("from_the_future"), Some("y"));
        let bad = Facts::from([("index", "seven"), ("name", "x")]);
        let err = bad.read::<Sample>().unwrap_err().to_string();
        assert!(
            err.contains("seven") || err.contains("invalid digit"),
            "{err}"
        );
    }
}
