//! Case-insensitive access to a JSON object, the way Go's `encoding/json` matches keys, with
//! errors that carry the field's full path.

use crate::error::{Error, Result};
use crate::xhttp::range::Range;
use serde_json::{Map, Value};

/// A JSON object being read field by field. Keys match case-insensitively; whatever is left
/// when `finish` is called is logged as ignored (Xray ignores unknown keys too).
pub struct Fields {
    path: String,
    entries: Vec<(String, Value)>,
}

impl Fields {
    /// Refuses an object with two keys that differ only in case: Go's decoder would keep
    /// the last in document order, which `serde_json` does not preserve, so either choice
    /// could silently differ from Xray's.
    pub fn new(path: &str, v: &Value) -> Result<Self> {
        match v {
            Value::Object(m) => {
                let keys: Vec<&String> = m.keys().collect();
                for (i, a) in keys.iter().enumerate() {
                    if let Some(b) = keys[i + 1..].iter().find(|b| b.eq_ignore_ascii_case(a)) {
                        let at = |k: &str| {
                            if path.is_empty() {
                                k.to_string()
                            } else {
                                format!("{path}.{k}")
                            }
                        };
                        return Err(Error::config(
                            at(b),
                            format!("`{a}` and `{b}` differ only in case; keep one"),
                        ));
                    }
                }
                Ok(Self::from_map(path, m))
            }
            _ => Err(Error::config(
                path,
                format!("expected a JSON object, got {v}"),
            )),
        }
    }

    pub fn from_map(path: &str, m: &Map<String, Value>) -> Self {
        Fields {
            path: path.to_string(),
            entries: m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// All remaining entries, for maps with free-form keys (e.g. `headers`).
    pub fn entries_mut(&mut self) -> &mut Vec<(String, Value)> {
        &mut self.entries
    }

    /// JSON path of a child field, for error messages.
    pub fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Removes and returns the value of `name` (case-insensitive). `null` counts as absent.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name))?;
        let (_, v) = self.entries.remove(i);
        // Keys differing only in case were refused by `new` (`from_map` callers merge maps
        // they built themselves); drop any left so they are not reported as unknown.
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        (!v.is_null()).then_some(v)
    }

    pub fn string(&mut self, name: &str) -> Result<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Error::config(
                self.path_of(name),
                format!("expected a string, got {v}"),
            )),
        }
    }

    pub fn bool(&mut self, name: &str) -> Result<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(Error::config(
                self.path_of(name),
                format!("expected true or false, got {v}"),
            )),
        }
    }

    pub fn int(&mut self, name: &str) -> Result<Option<i64>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                Error::config(self.path_of(name), format!("expected an integer, got {v}"))
            }),
        }
    }

    pub fn range(&mut self, name: &str) -> Result<Option<Range>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => Range::from_json(&v)
                .map(Some)
                .map_err(|e| Error::config(self.path_of(name), e)),
        }
    }

    pub fn object(&mut self, name: &str) -> Result<Option<Fields>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => Fields::new(&self.path_of(name), &v).map(Some),
        }
    }

    /// A list of strings given as a JSON array or a comma-separated string.
    pub fn string_list(&mut self, name: &str) -> Result<Option<Vec<String>>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            )),
            Some(Value::Array(a)) => self.strings(name, a).map(Some),
            Some(v) => Err(Error::config(
                self.path_of(name),
                format!("expected a list or comma-separated string, got {v}"),
            )),
        }
    }

    /// Lines given as a JSON array of strings or one string (Xray's inline PEM form).
    pub fn string_list_lines(&mut self, name: &str) -> Result<Option<Vec<String>>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s])),
            Some(Value::Array(a)) => self.strings(name, a).map(Some),
            Some(v) => Err(Error::config(
                self.path_of(name),
                format!("expected a list of lines, got {v}"),
            )),
        }
    }

    fn strings(&self, name: &str, list: Vec<Value>) -> Result<Vec<String>> {
        list.into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(Error::config(
                    self.path_of(name),
                    format!("expected strings in the list, got {other}"),
                )),
            })
            .collect()
    }

    /// Logs the keys nobody asked for; like Xray, they are ignored.
    pub fn finish(self) {
        for (k, _) in &self.entries {
            log::debug!("config: ignoring unknown key `{}`", self.path_of(k));
        }
    }
}
