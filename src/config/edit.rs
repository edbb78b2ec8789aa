//! Editing the configuration file in place: a change to a few keys keeps
//! the owner's comments, blank lines, key order and quoting everywhere
//! else, and a comment at the end of a changed line (`toml_edit`). Pure:
//! text in, text out.
//!
//! Keys are the dotted names of the configuration (`capture.level`),
//! `icecast` for the whole list of `[[icecast]]` tables.

use toml::Value;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// What to do with one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    Set(String, Value),
    Remove(String),
}

/// The file cannot be edited (it is not TOML: its loader says so first).
#[derive(Debug, thiserror::Error)]
#[error("the configuration file is not valid TOML: {0}")]
pub struct EditError(String);

/// `text` with `edits` applied, in order.
pub fn apply(text: &str, edits: &[Edit]) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError(e.message().to_string()))?;
    // The comment above a removed key goes to the next key added in its
    // section (the password's comment stays with its hash).
    let mut orphan: Option<(String, toml_edit::RawString)> = None;
    for edit in edits {
        match edit {
            Edit::Set(key, value) if key == "icecast" => set_icecast(&mut doc, value),
            Edit::Set(key, value) => {
                let sec = key.split_once('.').map(|(s, _)| s.to_string()).unwrap_or_default();
                let (table, name) = section(&mut doc, key, true);
                if let Some(table) = table {
                    let new = !table.contains_key(name);
                    set_value(table, name, value);
                    if new
                        && let Some((_, prefix)) = orphan.take_if(|(s, _)| *s == sec)
                        && let Some(mut k) = table.key_mut(name)
                    {
                        k.leaf_decor_mut().set_prefix(prefix);
                    }
                }
            }
            Edit::Remove(key) => {
                let sec = key.split_once('.').map(|(s, _)| s.to_string()).unwrap_or_default();
                if let (Some(table), name) = section(&mut doc, key, false) {
                    let prefix = table.key(name).and_then(|k| k.leaf_decor().prefix().cloned());
                    if table.remove(name).is_some()
                        && let Some(prefix) = prefix
                    {
                        orphan = Some((sec, prefix));
                    }
                }
            }
        }
    }
    Ok(doc.to_string())
}

/// The table that holds `key` and the key's last part; the section is
/// made (as a `[section]` table at the end) when `create` and missing.
fn section<'d>(doc: &'d mut DocumentMut, key: &'d str, create: bool) -> (Option<&'d mut Table>, &'d str) {
    match key.split_once('.') {
        None => (Some(doc.as_table_mut()), key),
        Some((sec, name)) => {
            let root = doc.as_table_mut();
            if !root.contains_key(sec) {
                if !create {
                    return (None, name);
                }
                root.insert(sec, Item::Table(Table::new()));
            }
            (root.get_mut(sec).and_then(Item::as_table_mut), name)
        }
    }
}

/// Sets `name` in `table`, in place: the comments above the key and after
/// the old value stay.
fn set_value(table: &mut Table, name: &str, value: &Value) {
    let mut new = to_edit(value);
    match table.get_mut(name).and_then(Item::as_value_mut) {
        Some(old) => {
            *new.decor_mut() = old.decor().clone();
            *old = new;
        }
        None => {
            table.insert(name, Item::Value(new));
        }
    }
}

/// Replaces the `[[icecast]]` list, editing the tables that stay in place
/// (their comments are kept) and adding or removing the rest.
fn set_icecast(doc: &mut DocumentMut, value: &Value) {
    let wanted: Vec<&toml::Table> = match value {
        Value::Array(items) => items.iter().filter_map(Value::as_table).collect(),
        _ => Vec::new(),
    };
    let root = doc.as_table_mut();
    if wanted.is_empty() {
        root.remove("icecast");
        return;
    }
    if !root.get("icecast").is_some_and(Item::is_array_of_tables) {
        root.insert("icecast", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let Some(list) = root.get_mut("icecast").and_then(Item::as_array_of_tables_mut) else {
        return;
    };
    while list.len() > wanted.len() {
        list.remove(list.len() - 1);
    }
    for (i, fields) in wanted.iter().enumerate() {
        if i >= list.len() {
            list.push(Table::new());
        }
        let Some(table) = list.get_mut(i) else { continue };
        let stale: Vec<String> = table
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| !fields.contains_key(k))
            .collect();
        for k in stale {
            table.remove(&k);
        }
        for (k, v) in fields.iter() {
            set_value(table, k, v);
        }
    }
}

/// A `toml` value as a `toml_edit` one.
fn to_edit(value: &Value) -> toml_edit::Value {
    match value {
        Value::String(s) => s.as_str().into(),
        Value::Integer(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Boolean(b) => (*b).into(),
        Value::Datetime(d) => d.to_string().into(),
        Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for item in items {
                a.push(to_edit(item));
            }
            toml_edit::Value::Array(a)
        }
        Value::Table(t) => {
            let mut inline = toml_edit::InlineTable::new();
            for (k, v) in t {
                inline.insert(k, to_edit(v));
            }
            toml_edit::Value::InlineTable(inline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# The owner's notes stay.\n\
                        listen = \"0.0.0.0:8000\"\n\
                        \n\
                        [capture]\n\
                        # quiet turntable\n\
                        level = \"-20dB\"   # was too low\n\
                        \n\
                        [station]\n\
                        name = 'Kitchen'\n";

    #[test]
    fn a_set_keeps_comments_order_and_quoting_elsewhere() {
        let out = apply(
            FILE,
            &[
                Edit::Set("capture.level".into(), Value::String("-6dB".into())),
                Edit::Set("device".into(), Value::String("auto".into())),
                Edit::Set("http.burst_ms".into(), Value::Integer(400)),
            ],
        )
        .expect("edit");
        assert!(out.starts_with("# The owner's notes stay.\n"), "{out}");
        assert!(
            out.contains("# quiet turntable\nlevel = \"-6dB\"   # was too low\n"),
            "{out}"
        );
        assert!(out.contains("name = 'Kitchen'"), "{out}");
        assert!(out.contains("[http]\nburst_ms = 400"), "{out}");
        let parsed: toml::Table = toml::from_str(&out).expect("still TOML");
        assert_eq!(parsed["device"].as_str(), Some("auto"));
    }

    #[test]
    fn remove_drops_a_key_and_icecast_tables_are_edited_in_place() {
        let file = "[admin]\n# set by me\npassword = \"hunter22\"\n\n# home relay\n[[icecast]]\n# the big one\nurl = \"http://a:8000/live\"\npassword = \"p\"\n\n[[icecast]]\nurl = \"http://b:8000/x\"\npassword = \"q\"\n";
        let mut one = toml::Table::new();
        one.insert("url".into(), Value::String("http://a:8000/new".into()));
        one.insert("password".into(), Value::String("p".into()));
        let out = apply(
            file,
            &[
                Edit::Remove("admin.password".into()),
                Edit::Set("admin.password_hash".into(), Value::String("$argon2id$x".into())),
                Edit::Set("icecast".into(), Value::Array(vec![Value::Table(one)])),
            ],
        )
        .expect("edit");
        assert!(!out.contains("hunter22"), "{out}");
        assert!(out.contains("# set by me\npassword_hash = \"$argon2id$x\""), "{out}");
        assert!(out.contains("# the big one\nurl = \"http://a:8000/new\""), "{out}");
        assert!(!out.contains("http://b:8000"), "{out}");
        let none = apply(&out, &[Edit::Set("icecast".into(), Value::Array(Vec::new()))]).expect("edit");
        assert!(!none.contains("[[icecast]]"), "{none}");
    }

    #[test]
    fn text_that_is_not_toml_is_refused() {
        assert!(apply("listen = ", &[]).is_err());
    }
}
