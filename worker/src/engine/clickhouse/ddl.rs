//! DDL handling for restores, as text transformations that know ClickHouse's lexical rules
//! (identifiers, backquotes, string literals, nesting) and nothing of a server version:
//! the order objects are created in, renaming databases, dropping `ON CLUSTER`, and turning
//! `Replicated*MergeTree` into its single-node engine.
//!
//! Order: databases, then tables that store rows (loaded right away), then materialized
//! views (an MV is an insert trigger: created before its source is loaded it would count
//! every row twice), then the MVs' inner tables' rows, then views, Distributed tables and
//! everything else.

use std::collections::BTreeMap;

use super::schema::{stores_data, TableDdl};

/// Restore phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Tables with rows of their own, created and loaded first.
    Data,
    /// Materialized views (their inner tables come with them).
    MaterializedView,
    /// Views, Distributed, Merge, Buffer, dictionaries…: nothing to load.
    Other,
}

/// What to do with a table in a restore.
pub fn phase(table: &TableDdl) -> Option<Phase> {
    if is_inner(&table.name) {
        // Created by its materialized view; only its rows are loaded.
        return None;
    }
    Some(if table.engine == "MaterializedView" {
        Phase::MaterializedView
    } else if stores_data(&table.engine) {
        Phase::Data
    } else {
        Phase::Other
    })
}

/// The materialized view an inner table belongs to, by name (`.inner.NAME`, Ordinary
/// databases).
pub fn inner_of(name: &str) -> Option<&str> {
    name.strip_prefix(".inner.")
}

/// True for a materialized view's inner table: `.inner.NAME` (Ordinary databases) or
/// `.inner_id.UUID` (Atomic databases, the view's UUID).
pub fn is_inner(name: &str) -> bool {
    name.starts_with(".inner.") || name.starts_with(".inner_id.")
}

/// The materialized view that owns inner table `table`, among `tables` (same database).
pub fn owner_of<'a>(table: &TableDdl, tables: &'a [TableDdl]) -> Option<&'a TableDdl> {
    let same_db = |t: &&TableDdl| t.database == table.database && t.engine == "MaterializedView";
    if let Some(view) = inner_of(&table.name) {
        return tables.iter().filter(same_db).find(|t| t.name == view);
    }
    let uuid = table.name.strip_prefix(".inner_id.")?;
    tables
        .iter()
        .filter(same_db)
        .find(|t| t.uuid.as_deref() == Some(uuid))
}

/// A lexical token of a DDL statement, enough to rewrite names safely.
#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    /// Bare or backquoted identifier (with its original text).
    Ident(&'a str),
    /// A string literal, untouched.
    Str(&'a str),
    Other(&'a str),
}

fn tokens(sql: &str) -> Vec<Token<'_>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        if c == b'`' || c == b'\'' || c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(bytes.len());
            out.push(if c == b'\'' {
                Token::Str(&sql[start..i])
            } else {
                Token::Ident(&sql[start..i])
            });
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token::Ident(&sql[start..i]));
        } else {
            // Multi-byte characters stay whole.
            i += sql[i..].chars().next().map_or(1, char::len_utf8);
            out.push(Token::Other(&sql[start..i]));
        }
    }
    out
}

fn unquote(ident: &str) -> String {
    match ident.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
        Some(inner) => inner.replace("\\`", "`").replace("\\\\", "\\"),
        None => match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(inner) => inner.to_string(),
            None => ident.to_string(),
        },
    }
}

fn is_ws(t: &Token<'_>) -> bool {
    matches!(t, Token::Other(s) if s.trim().is_empty())
}

/// Renames databases in qualified names (`db.table`, `` `db`.`t` ``) and in the database
/// argument of `Distributed(cluster, db, table)`; string literals and unqualified names are
/// left alone.
pub fn rename_databases(sql: &str, map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return sql.to_string();
    }
    let toks = tokens(sql);
    let mut out = String::with_capacity(sql.len());
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Ident(raw) => {
                let name = unquote(raw);
                let qualifies = matches!(toks.get(i + 1), Some(Token::Other(".")))
                    && !matches!(
                        i.checked_sub(1).and_then(|p| toks.get(p)),
                        Some(Token::Other("."))
                    );
                let distributed_db = distributed_arg(&toks, i) == Some(1);
                match map.get(&name) {
                    Some(new) if qualifies || distributed_db => {
                        out.push_str(&super::quote_ident(new))
                    }
                    _ => out.push_str(raw),
                }
            }
            Token::Str(raw) if distributed_arg(&toks, i) == Some(1) => {
                let name = raw.trim_matches('\'');
                match map.get(name) {
                    Some(new) => out.push_str(&super::quote_str(new)),
                    None => out.push_str(raw),
                }
            }
            Token::Str(s) | Token::Other(s) => out.push_str(s),
        }
    }
    out
}

/// When token `i` is a top-level argument of a `Distributed(…)` call, its position.
fn distributed_arg(toks: &[Token<'_>], i: usize) -> Option<usize> {
    // Walk back to the opening parenthesis at depth 0, counting commas.
    let (mut depth, mut commas) = (0i32, 0usize);
    let mut j = i;
    while j > 0 {
        j -= 1;
        match &toks[j] {
            Token::Other(")") => depth += 1,
            Token::Other("(") if depth > 0 => depth -= 1,
            Token::Other("(") => {
                let mut k = j;
                while k > 0 && is_ws(&toks[k - 1]) {
                    k -= 1;
                }
                return (k > 0 && toks[k - 1] == Token::Ident("Distributed")).then_some(commas);
            }
            Token::Other(",") if depth == 0 => commas += 1,
            _ => {}
        }
    }
    None
}

/// Drops `ON CLUSTER name` (a restore goes to one server; run it per node for a cluster).
pub fn strip_on_cluster(sql: &str) -> String {
    let toks = tokens(sql);
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < toks.len() {
        if let Token::Ident(on) = toks[i] {
            if on.eq_ignore_ascii_case("ON") {
                // ON <ws> CLUSTER <ws> name
                let mut j = i + 1;
                while j < toks.len() && is_ws(&toks[j]) {
                    j += 1;
                }
                if matches!(toks.get(j), Some(Token::Ident(c)) if c.eq_ignore_ascii_case("CLUSTER"))
                {
                    j += 1;
                    while j < toks.len() && is_ws(&toks[j]) {
                        j += 1;
                    }
                    if matches!(toks.get(j), Some(Token::Ident(_) | Token::Str(_))) {
                        i = j + 1;
                        continue;
                    }
                }
            }
        }
        match toks[i] {
            Token::Ident(s) | Token::Str(s) | Token::Other(s) => out.push_str(s),
        }
        i += 1;
    }
    out
}

/// Turns `ENGINE = Replicated<X>MergeTree('/path', '{replica}'[, args])` into
/// `ENGINE = <X>MergeTree[(args)]`; other statements come back unchanged. Returns whether
/// anything changed.
pub fn unreplicate(sql: &str) -> (String, bool) {
    let toks = tokens(sql);
    let Some(pos) = toks.iter().position(|t| {
        matches!(t, Token::Ident(name) if name.starts_with("Replicated") && name.ends_with("MergeTree"))
    }) else {
        return (sql.to_string(), false);
    };
    let Token::Ident(engine) = toks[pos] else {
        unreachable!("matched above")
    };
    let plain = engine.trim_start_matches("Replicated");
    let mut out = String::with_capacity(sql.len());
    for t in &toks[..pos] {
        match t {
            Token::Ident(s) | Token::Str(s) | Token::Other(s) => out.push_str(s),
        }
    }
    out.push_str(plain);
    // Arguments: split the top-level list and drop the first two (path, replica).
    let mut j = pos + 1;
    while j < toks.len() && is_ws(&toks[j]) {
        j += 1;
    }
    if toks.get(j) != Some(&Token::Other("(")) {
        // Replicated engine without arguments (path from server defaults).
        for t in &toks[pos + 1..] {
            match t {
                Token::Ident(s) | Token::Str(s) | Token::Other(s) => out.push_str(s),
            }
        }
        return (out, true);
    }
    let mut depth = 0i32;
    let mut args: Vec<String> = vec![String::new()];
    let mut end = j;
    for (k, t) in toks.iter().enumerate().skip(j) {
        let text = match t {
            Token::Ident(s) | Token::Str(s) | Token::Other(s) => *s,
        };
        match text {
            "(" => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ")" => {
                depth -= 1;
                if depth == 0 {
                    end = k;
                    break;
                }
            }
            "," if depth == 1 => {
                args.push(String::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().expect("one").push_str(text);
    }
    let rest: Vec<String> = args
        .into_iter()
        .skip(2)
        .map(|a| a.trim().to_string())
        .collect();
    if !rest.is_empty() {
        out.push('(');
        out.push_str(&rest.join(", "));
        out.push(')');
    }
    for t in &toks[end + 1..] {
        match t {
            Token::Ident(s) | Token::Str(s) | Token::Other(s) => out.push_str(s),
        }
    }
    (out, true)
}

/// True when the table has a TTL clause (the server prints keywords in capitals): rows past
/// it may be gone after a restore.
pub fn has_ttl(sql: &str) -> bool {
    tokens(sql).iter().any(|t| matches!(t, Token::Ident("TTL")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SigNoz's DDL as its migrations issue it (ClickHouse 24.x), shortened but verbatim in
    /// the parts that matter: Replicated engines with macros, ON CLUSTER, TTL, CODEC,
    /// ALIAS/MATERIALIZED columns, materialized views writing TO tables, Distributed twins.
    const SIGNOZ_INDEX: &str = "CREATE TABLE IF NOT EXISTS signoz_traces.signoz_index_v2 ON CLUSTER cluster (
  `timestamp` DateTime64(9) CODEC(DoubleDelta, LZ4),
  `traceID` FixedString(32) CODEC(ZSTD(1)),
  `serviceName` LowCardinality(String) CODEC(ZSTD(1)),
  `durationNano` UInt64 CODEC(T64, ZSTD(1)),
  `stringTagMap` Map(String, String) CODEC(ZSTD(1)),
  `hasError` bool CODEC(T64, ZSTD(1)),
  `responseStatusCode` LowCardinality(String) MATERIALIZED stringTagMap['http.status_code'] CODEC(ZSTD(1)),
  `db.name` String ALIAS stringTagMap['db.name'],
  INDEX idx_service serviceName TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{uuid}/{shard}', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (serviceName, hasError, toStartOfHour(timestamp), name)
TTL toDateTime(timestamp) + toIntervalSecond(1296000) DELETE
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1";

    const SIGNOZ_DIST: &str = "CREATE TABLE IF NOT EXISTS signoz_traces.distributed_signoz_index_v2 ON CLUSTER cluster AS signoz_traces.signoz_index_v2 ENGINE = Distributed('cluster', 'signoz_traces', 'signoz_index_v2', cityHash64(traceID))";

    const SIGNOZ_MV: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS signoz_traces.dependency_graph_minutes_db_calls_mv_v2 ON CLUSTER cluster TO signoz_traces.dependency_graph_minutes_v2 AS SELECT serviceName as src, tagMap['db.system'] as dest, toStartOfMinute(timestamp) as timestamp FROM signoz_traces.signoz_index_v2 WHERE dest != '' and kind != 2 GROUP BY timestamp, src, dest";

    const SIGNOZ_REPLACING: &str = "CREATE TABLE signoz_logs.logs_attribute_keys ON CLUSTER cluster (name String, datatype String CODEC(ZSTD(1))) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{uuid}/{shard}', '{replica}', version) ORDER BY (name, datatype)";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn strips_on_cluster_and_nothing_else() {
        let out = strip_on_cluster(SIGNOZ_INDEX);
        assert!(
            out.starts_with("CREATE TABLE IF NOT EXISTS signoz_traces.signoz_index_v2  ("),
            "{out}"
        );
        assert!(!out.contains("ON CLUSTER"));
        assert!(out.contains("TTL toDateTime(timestamp) + toIntervalSecond(1296000) DELETE"));
        assert!(out.contains("CODEC(T64, ZSTD(1))"));
        // A literal that says ON CLUSTER is data, not syntax.
        assert_eq!(
            strip_on_cluster("SELECT 'ON CLUSTER x'"),
            "SELECT 'ON CLUSTER x'"
        );
    }

    #[test]
    fn unreplicates_engines_keeping_their_own_arguments() {
        let (out, changed) = unreplicate(SIGNOZ_INDEX);
        assert!(changed);
        assert!(out.contains(") ENGINE = MergeTree\nPARTITION BY"), "{out}");
        assert!(!out.contains("{replica}"));
        let (out, _) = unreplicate(SIGNOZ_REPLACING);
        assert!(
            out.contains("ENGINE = ReplacingMergeTree(version) ORDER BY"),
            "{out}"
        );
        let (same, changed) =
            unreplicate("CREATE TABLE a.b (x UInt8) ENGINE = MergeTree ORDER BY x");
        assert!(!changed);
        assert_eq!(
            same,
            "CREATE TABLE a.b (x UInt8) ENGINE = MergeTree ORDER BY x"
        );
        let (out, _) =
            unreplicate("CREATE TABLE a.b (x UInt8) ENGINE = ReplicatedMergeTree ORDER BY x");
        assert_eq!(
            out,
            "CREATE TABLE a.b (x UInt8) ENGINE = MergeTree ORDER BY x"
        );
    }

    #[test]
    fn renames_databases_in_names_and_distributed_arguments_only() {
        let m = map(&[("signoz_traces", "restored_traces")]);
        let out = rename_databases(SIGNOZ_MV, &m);
        assert!(
            out.contains("`restored_traces`.dependency_graph_minutes_db_calls_mv_v2"),
            "{out}"
        );
        assert!(
            out.contains("TO `restored_traces`.dependency_graph_minutes_v2"),
            "{out}"
        );
        assert!(
            out.contains("FROM `restored_traces`.signoz_index_v2"),
            "{out}"
        );
        assert!(
            out.contains("tagMap['db.system']"),
            "string literals stay: {out}"
        );
        let out = rename_databases(SIGNOZ_DIST, &m);
        assert!(
            out.contains(
                "Distributed('cluster', 'restored_traces', 'signoz_index_v2', cityHash64(traceID))"
            ),
            "{out}"
        );
        let out = rename_databases("CREATE TABLE shop.`.inner.users_mv` (user String) ENGINE = Distributed(local, shop, events)", &map(&[("shop", "copy")]));
        assert_eq!(out, "CREATE TABLE `copy`.`.inner.users_mv` (user String) ENGINE = Distributed(local, `copy`, events)");
        // A column called like the database is not a database.
        let out = rename_databases(
            "SELECT shop FROM shop.t WHERE x.shop = 1",
            &map(&[("shop", "copy")]),
        );
        assert_eq!(out, "SELECT shop FROM `copy`.t WHERE x.shop = 1");
        // `db.name` (a quoted column name with a dot) is one identifier.
        let out = rename_databases(SIGNOZ_INDEX, &map(&[("db", "nope")]));
        assert!(
            out.contains("`db.name` String ALIAS stringTagMap['db.name']"),
            "{out}"
        );
    }

    #[test]
    fn sees_ttl_clauses() {
        assert!(has_ttl(SIGNOZ_INDEX));
        assert!(!has_ttl(SIGNOZ_DIST));
        // ClickHouse prints keywords in capitals; a column called ttl is not a clause.
        assert!(!has_ttl("CREATE TABLE a.b (ttl UInt8) ENGINE = Log"));
    }

    #[test]
    fn orders_phases() {
        let t = |name: &str, engine: &str| TableDdl {
            database: "d".into(),
            name: name.into(),
            engine: engine.into(),
            create: String::new(),
            columns: vec![],
            part: None,
            data_format: Default::default(),
            uuid: None,
        };
        assert_eq!(phase(&t("events", "MergeTree")), Some(Phase::Data));
        assert_eq!(
            phase(&t("mv", "MaterializedView")),
            Some(Phase::MaterializedView)
        );
        assert_eq!(phase(&t("all", "Distributed")), Some(Phase::Other));
        assert_eq!(phase(&t("v", "View")), Some(Phase::Other));
        assert_eq!(phase(&t(".inner.mv", "MergeTree")), None);
        assert_eq!(
            phase(&t(
                ".inner_id.2b1c1ba5-5a7f-4c4e-9d8e-1f1d3c2b1a00",
                "MergeTree"
            )),
            None
        );
        assert!(Phase::Data < Phase::MaterializedView && Phase::MaterializedView < Phase::Other);
    }

    #[test]
    fn inner_tables_belong_to_their_view_by_name_or_uuid() {
        let t = |name: &str, engine: &str, uuid: Option<&str>| TableDdl {
            database: "d".into(),
            name: name.into(),
            engine: engine.into(),
            create: String::new(),
            columns: vec![],
            part: None,
            data_format: Default::default(),
            uuid: uuid.map(str::to_string),
        };
        let u = "2b1c1ba5-5a7f-4c4e-9d8e-1f1d3c2b1a00";
        let all = vec![
            t("mv", "MaterializedView", Some(u)),
            t("old_mv", "MaterializedView", None),
            t(&format!(".inner_id.{u}"), "SummingMergeTree", Some("ffff")),
            t(".inner.old_mv", "MergeTree", None),
            t("plain", "MergeTree", Some(u)),
        ];
        assert_eq!(owner_of(&all[2], &all).map(|o| o.name.as_str()), Some("mv"));
        assert_eq!(
            owner_of(&all[3], &all).map(|o| o.name.as_str()),
            Some("old_mv")
        );
        assert!(owner_of(&all[4], &all).is_none());
    }
}
