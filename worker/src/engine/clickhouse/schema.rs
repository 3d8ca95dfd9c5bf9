//! The model of a ClickHouse backup shared by its backup and restore sides: the schema
//! part's content (every database's and table's DDL as the server printed it, with the
//! columns and format of each data part) and the manifest facts the engine records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::native;
use crate::catalog::facts::json_text;
use crate::catalog::PartFormat;

/// The schema part's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// `version()` of the server it was read from.
    pub server_version: String,
    /// Databases, in the order they are created.
    pub databases: Vec<DatabaseDdl>,
    /// Tables, views and dictionaries, in the server's order (a restore orders them by
    /// [`super::ddl::phase`]).
    pub tables: Vec<TableDdl>,
}

/// One database of the schema part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseDdl {
    /// Its name.
    pub name: String,
    /// `SHOW CREATE DATABASE`.
    pub create: String,
}

/// One table (or view, dictionary…) of the schema part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDdl {
    /// Its database.
    pub database: String,
    /// Its name.
    pub name: String,
    /// Its engine, as `system.tables` names it (`MergeTree`, `MaterializedView`…).
    pub engine: String,
    /// `SHOW CREATE TABLE`.
    pub create: String,
    /// Columns the data part holds, in order (ALIAS and MATERIALIZED columns are computed
    /// again on insert, so they are left out); empty for tables without data of their own.
    pub columns: Vec<String>,
    /// Name of the data part, for tables that store rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// Format of the data part (backups older than this field hold Native).
    #[serde(default, skip_serializing_if = "DataFormat::is_native")]
    pub data_format: DataFormat,
    /// The table's UUID on servers that have one (Atomic databases name a materialized
    /// view's inner table `.inner_id.<the view's uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// How a table's rows are dumped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Native, walked by [`native`]: compact and fast.
    #[default]
    Native,
    /// TabSeparated ([`super::tsv`]), for tables with a column no size rule walks.
    Tsv,
}

impl DataFormat {
    fn is_native(&self) -> bool {
        *self == DataFormat::Native
    }

    /// The format that can carry columns of these types with exact row counts.
    pub fn for_types<'a>(types: impl IntoIterator<Item = &'a str>) -> Self {
        if types.into_iter().all(|t| native::parse_type(t).is_ok()) {
            DataFormat::Native
        } else {
            DataFormat::Tsv
        }
    }

    /// The name ClickHouse knows the format by.
    pub fn clickhouse_name(self) -> &'static str {
        match self {
            DataFormat::Native => "Native",
            DataFormat::Tsv => "TabSeparated",
        }
    }

    /// The part format recorded in the manifest.
    pub fn part_format(self) -> PartFormat {
        match self {
            DataFormat::Native => PartFormat::ClickhouseNative,
            DataFormat::Tsv => PartFormat::ClickhouseTsv,
        }
    }

    /// The format of a part, from its manifest entry.
    pub fn of_part(format: &PartFormat) -> Option<Self> {
        match format {
            PartFormat::ClickhouseNative => Some(DataFormat::Native),
            PartFormat::ClickhouseTsv => Some(DataFormat::Tsv),
            _ => None,
        }
    }
}

/// Engines whose tables hold rows of their own (views, Distributed, Merge, Null… do not).
pub fn stores_data(engine: &str) -> bool {
    engine.ends_with("MergeTree")
        || matches!(
            engine,
            "Log" | "TinyLog" | "StripeLog" | "Memory" | "Set" | "Join"
        )
}

/// What a ClickHouse backup records in the manifest's `facts`, so counts can be compared
/// without decrypting the schema part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// `db.table` of the tables with a TTL clause: fewer rows there may be expiry, not
    /// loss. Stored comma-separated (`ttl_tables`).
    #[serde(default, with = "comma_list", skip_serializing_if = "Vec::is_empty")]
    pub ttl_tables: Vec<String>,
    /// Materialized views' inner tables, `db.inner` → view name, so counts can be compared
    /// after a restore gave the inner table another name. Stored as JSON text.
    #[serde(
        default,
        with = "json_text",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub inner_tables: BTreeMap<String, String>,
    /// Incremental backups between this one and the full backup its chain starts with
    /// (0, absent, for a full backup): `--full-every` starts a new chain when it is reached.
    #[serde(
        default,
        with = "crate::catalog::facts::text",
        skip_serializing_if = "is_zero"
    )]
    pub incrementals: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The `ttl_tables` fact's text: `db.a,db.b` (the form every manifest since the first
/// ClickHouse backup has).
mod comma_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&list.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let text = String::deserialize(d)?;
        Ok(text
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_keep_the_wire_form_of_earlier_manifests() {
        let stored = crate::catalog::Facts::from([
            ("ttl_tables", "shop.events,shop.logs"),
            ("inner_tables", r#"{"shop..inner.users_mv":"users_mv"}"#),
        ]);
        let facts: Facts = stored.read().unwrap();
        assert_eq!(facts.ttl_tables, ["shop.events", "shop.logs"]);
        assert_eq!(facts.inner_tables["shop..inner.users_mv"], "users_mv");
        assert_eq!(crate::catalog::Facts::of(&facts), stored);
        assert!(crate::catalog::Facts::of(&Facts::default()).is_empty());
    }
}
