//! Program edits of `config.toml` that keep the user's comments and layout (`toml_edit`).
//!
//! An edit starts by parsing the file as the typed config: a file that does not parse is never
//! overwritten, and the error says where it is broken.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, InlineTable, Item, Value};

use crate::config::ConfigError;
use crate::{Config, SecretRef, atomic};

/// A config file open for editing.
pub struct ConfigDocument {
    path: PathBuf,
    doc: DocumentMut,
}

/// Why an edit could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0}; the file was left unchanged — fix it by hand first")]
    Unparsable(ConfigError),
    #[error("the edit would make the config invalid: {0}")]
    Invalid(ConfigError),
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
}

impl ConfigDocument {
    /// Opens `path`, refusing a file that does not parse as a valid config.
    pub fn open(path: &Path) -> Result<ConfigDocument, EditError> {
        let text = crate::config::read_text(path).map_err(EditError::Unparsable)?;
        Config::parse(&text, path).map_err(EditError::Unparsable)?;
        let doc = text.parse::<DocumentMut>().map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| crate::config::line_col(&text, s.start))
                .unwrap_or((1, 1));
            EditError::Unparsable(ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                key: None,
                message: e.message().to_owned(),
            })
        })?;
        Ok(ConfigDocument {
            path: path.to_owned(),
            doc,
        })
    }

    /// Sets the secret field at dotted `key` (e.g. `gateway.auth.token`) to a reference.
    pub fn set_secret_ref(&mut self, key: &str, r: &SecretRef) {
        let mut t = InlineTable::new();
        match r {
            SecretRef::Env { id } => {
                t.insert("source", "env".into());
                t.insert("id", id.as_str().into());
            }
            SecretRef::File { path } => {
                t.insert("source", "file".into());
                t.insert("path", path.as_str().into());
            }
            SecretRef::Exec {
                command,
                timeout_ms,
            } => {
                t.insert("source", "exec".into());
                t.insert(
                    "command",
                    Value::Array(command.iter().map(|s| s.as_str()).collect()),
                );
                if let Some(ms) = timeout_ms {
                    t.insert("timeout_ms", (*ms as i64).into());
                }
            }
        }
        self.set_value(key, Value::InlineTable(t));
    }

    /// Sets any value at dotted `key`, creating tables as needed, keeping the existing key's
    /// decoration (comments) when it is replaced.
    pub fn set_value(&mut self, key: &str, value: Value) {
        let parts: Vec<&str> = key.split('.').collect();
        let (last, tables) = parts.split_last().expect("non-empty key");
        let mut table = self.doc.as_table_mut();
        for part in tables {
            let entry = table.entry(part).or_insert_with(|| {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                Item::Table(t)
            });
            table = entry.as_table_mut().expect("config sections are tables");
        }
        match table.get_mut(last) {
            Some(Item::Value(old)) => {
                let decor = old.decor().clone();
                *old = value;
                *old.decor_mut() = decor;
            }
            _ => {
                table.insert(last, Item::Value(value));
            }
        }
    }

    /// Whether dotted `key` holds a plain string (a literal secret).
    pub fn is_literal_string(&self, key: &str) -> bool {
        let mut item = self.doc.as_item();
        for part in key.split('.') {
            match item.get(part) {
                Some(i) => item = i,
                None => return false,
            }
        }
        item.as_str().is_some()
    }

    /// The document text as it would be written.
    pub fn render(&self) -> String {
        self.doc.to_string()
    }

    /// Validates the edited document and writes it atomically (0600); a config that is a symlink
    /// stays one and its target is rewritten.
    pub fn save(&self) -> Result<atomic::Written, EditError> {
        let text = self.render();
        Config::parse(&text, &self.path).map_err(EditError::Invalid)?;
        Ok(atomic::write_private(&self.path, text.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_comments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "# my gateway\n[gateway]\nport = 18789 # keep this port\n\n[gateway.auth]\n# the token\ntoken = \"plain\"\n",
        )
        .unwrap();
        let mut doc = ConfigDocument::open(&p).unwrap();
        assert!(doc.is_literal_string("gateway.auth.token"));
        doc.set_secret_ref(
            "gateway.auth.token",
            &SecretRef::File {
                path: "/run/tok".into(),
            },
        );
        doc.save().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# my gateway"));
        assert!(text.contains("# keep this port"));
        assert!(text.contains("# the token"));
        assert!(
            text.contains(r#"token = { source = "file", path = "/run/tok" }"#),
            "{text}"
        );
        assert!(!text.contains("plain"));
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.config.gateway.auth.token.unwrap().kind(), "file");
    }

    #[test]
    fn unparsable_config_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        let broken = "[gateway\nport = 1\n";
        std::fs::write(&p, broken).unwrap();
        let err = ConfigDocument::open(&p).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("config.toml:1:"), "{msg}");
        assert!(msg.contains("left unchanged"), "{msg}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), broken);
    }
}
