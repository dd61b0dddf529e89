//! Host ports for `PORT` apps: the lowest free port of the configured range, given at an
//! app's first deploy and kept until it is deleted or switched to `HOST`.
//!
//! The unique index on `api_app.current_port` is the guarantee; allocation is also
//! serialized so concurrent deploys do not all pick the same lowest port and retry: on
//! PostgreSQL by a transaction-scoped advisory lock (other instances too), on SQLite by the
//! single writer.

use std::fmt;
use std::str::FromStr;

use entity::app;
use entity::prelude::*;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};

use super::DomainError;

/// An inclusive range of host ports, `9000-9999` by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: i32,
    pub last: i32,
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            first: 9000,
            last: 9999,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |p: &str| {
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| (1..=65535).contains(p))
        };
        match s.split_once('-').map(|(a, b)| (parse(a), parse(b))) {
            Some((Some(first), Some(last))) if first <= last => Ok(Self { first, last }),
            _ => Err(format!(
                "expected FIRST-LAST ports within 1-65535, got {s:?}"
            )),
        }
    }
}

/// Key of the advisory lock that serializes port allocation on PostgreSQL.
const ALLOCATION_LOCK: i64 = 0x6b73_706f_7274; // "kspost"

/// The lowest port of `range` no app holds, inside the caller's write transaction.
pub async fn allocate(txn: &impl ConnectionTrait, range: PortRange) -> Result<i32, DomainError> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [ALLOCATION_LOCK.into()],
        ))
        .await?;
    }
    let taken: Vec<i32> = App::find()
        .select_only()
        .column(app::Column::CurrentPort)
        .filter(app::Column::CurrentPort.between(range.first, range.last))
        .order_by_asc(app::Column::CurrentPort)
        .into_tuple::<Option<i32>>()
        .all(txn)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let mut candidate = range.first;
    for port in taken {
        if port != candidate {
            break;
        }
        candidate += 1;
    }
    if candidate > range.last {
        return Err(DomainError::Conflict {
            field: None,
            message: format!(
                "every port of {range} is held by an app; delete apps, switch some to HOST, or widen --port-range"
            ),
        });
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!("9000-9999".parse(), Ok(PortRange::default()));
        assert_eq!(
            " 10 - 12 ".parse(),
            Ok(PortRange {
                first: 10,
                last: 12
            })
        );
        assert!("12-10".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("9000".parse::<PortRange>().is_err());
    }
}
