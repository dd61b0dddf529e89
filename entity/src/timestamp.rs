//! [`Timestamp`]: a UTC instant stored the way Django stored it.
//!
//! Django wrote `created_at` and friends on SQLite as `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC,
//! no offset). sqlx would write a `DateTime<Utc>` as RFC 3339 (`…T…+00:00`), and SQLite
//! compares those as text, so rows written by Django and by Keystone would sort and filter
//! wrongly against each other. This type is bound as a naive UTC date-time instead: the
//! Django format on SQLite, and on PostgreSQL a `timestamp` that the server converts to
//! `timestamptz` under the session time zone, which sqlx pins to UTC. It is read back
//! through `DateTime<Utc>`, which understands both formats.

use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, ValueType, ValueTypeErr};
use sea_orm::{ColIdx, QueryResult, TryGetError, TryGetable, Value};

pub type DateTimeUtc = chrono::DateTime<chrono::Utc>;

/// A UTC instant with microsecond precision (what both databases store).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(DateTimeUtc);

impl Timestamp {
    /// Truncates to microseconds, so a value reads back exactly as it was written.
    pub fn new(instant: DateTimeUtc) -> Self {
        use chrono::{DurationRound, TimeDelta};
        Self(
            instant
                .duration_trunc(TimeDelta::microseconds(1))
                .unwrap_or(instant),
        )
    }

    pub fn now() -> Self {
        Self::new(chrono::Utc::now())
    }

    pub fn as_utc(&self) -> DateTimeUtc {
        self.0
    }
}

impl From<DateTimeUtc> for Timestamp {
    fn from(instant: DateTimeUtc) -> Self {
        Self::new(instant)
    }
}

impl From<Timestamp> for Value {
    fn from(ts: Timestamp) -> Self {
        Value::ChronoDateTime(Some(ts.0.naive_utc()))
    }
}

impl Nullable for Timestamp {
    fn null() -> Value {
        Value::ChronoDateTime(None)
    }
}

impl ValueType for Timestamp {
    fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
        match v {
            Value::ChronoDateTime(Some(naive)) => Ok(Self(naive.and_utc())),
            Value::ChronoDateTimeUtc(Some(utc)) => Ok(Self(utc)),
            _ => Err(ValueTypeErr),
        }
    }

    fn type_name() -> String {
        "Timestamp".to_owned()
    }

    fn array_type() -> ArrayType {
        ArrayType::ChronoDateTime
    }

    fn column_type() -> ColumnType {
        ColumnType::TimestampWithTimeZone
    }
}

impl TryGetable for Timestamp {
    fn try_get_by<I: ColIdx>(res: &QueryResult, index: I) -> Result<Self, TryGetError> {
        DateTimeUtc::try_get_by(res, index).map(Self)
    }
}
