//! Names of eventfold's tables: a validated prefix (and, on PostgreSQL, an optional schema).
//!
//! The prefix and schema end up in SQL text (table names cannot be bound as parameters), so they
//! are validated when they are made: lowercase ASCII letters, digits and `_`, starting with a
//! letter or `_`, at most 32 bytes (so that constraint names stay within PostgreSQL's 63). Anything else is a [`StoreError::InvalidIdentifier`], never
//! interpolated.
//!
//! ```
//! use eventfold_eventstore::Naming;
//!
//! let naming = Naming::new("billing_").unwrap();
//! assert_eq!(naming.table("events"), "\"billing_events\"");
//! assert!(Naming::new("x; DROP TABLE users").is_err());
//! assert!(Naming::new("ok_").unwrap().with_schema("Bad-Schema").is_err());
//! ```

use crate::error::StoreError;

/// Where eventfold's tables live: `[schema.]{prefix}events`, `{prefix}snapshots`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Naming {
    schema: Option<String>,
    prefix: String,
}

impl Default for Naming {
    fn default() -> Self {
        Self {
            schema: None,
            prefix: "eventfold_".to_owned(),
        }
    }
}

/// Longest prefix or schema name.
pub const MAX_IDENTIFIER_LEN: usize = 32;

fn validate(what: &'static str, value: &str, allow_empty: bool) -> Result<(), StoreError> {
    if value.is_empty() && allow_empty {
        return Ok(());
    }
    check_identifier(
        what,
        value,
        MAX_IDENTIFIER_LEN,
        "it is longer than 32 bytes",
    )
}

/// Checks a name the library puts into SQL (a prefix, a schema, a projection table): not empty,
/// at most `max_len` bytes (else `too_long`), lowercase ASCII letters, digits and `_`, starting
/// with a letter or `_`.
pub(crate) fn check_identifier(
    what: &'static str,
    value: &str,
    max_len: usize,
    too_long: &'static str,
) -> Result<(), StoreError> {
    let fail = |reason| {
        Err(StoreError::InvalidIdentifier {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > max_len {
        return fail(too_long);
    }
    let mut bytes = value.bytes();
    if !bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return fail("it must start with a lowercase ASCII letter or `_`");
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return fail("it may only hold lowercase ASCII letters, digits and `_`");
    }
    Ok(())
}

impl Naming {
    /// Tables named `{prefix}events` and so on. The prefix may be empty.
    pub fn new(prefix: impl Into<String>) -> Result<Self, StoreError> {
        let prefix = prefix.into();
        validate("table prefix", &prefix, true)?;
        Ok(Self {
            schema: None,
            prefix,
        })
    }

    /// Puts the tables in a schema (PostgreSQL only), created by the migrations if missing.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Result<Self, StoreError> {
        let schema = schema.into();
        validate("schema", &schema, false)?;
        self.schema = Some(schema);
        Ok(self)
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The quoted, qualified name of a table, e.g. `"eventfold_events"`.
    pub fn table(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}{name}\"", self.prefix),
            None => format!("\"{}{name}\"", self.prefix),
        }
    }

    /// The unquoted name of a table without schema, for messages and constraint names.
    pub fn bare(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}
