//! Nested pages and counts: the same page (or count) for many parents, in one statement
//! whose text does not depend on how many parents there are.
//!
//! The parents' ids are bound as **one** parameter (PostgreSQL: a `bigint[]`; SQLite: a JSON
//! array read by `json_each`), so one prepared statement serves every batch size. Each
//! parent's page is a top-N that the `(parent, sort, id)` index answers by reading N + 1
//! entries, whatever the length of the parent's history:
//!
//! - PostgreSQL: `unnest($1) AS p CROSS JOIN LATERAL (SELECT … WHERE parent = p … ORDER BY
//!   … LIMIT n + 1)`;
//! - SQLite has no `LATERAL`; its equivalent is a correlated `IN` subquery per parent:
//!   `json_each(?) AS p CROSS JOIN t ON t.id IN (SELECT id FROM t WHERE parent = p.value …
//!   ORDER BY … LIMIT n + 1)`, which SQLite runs once per `p` row against the same index
//!   (`CROSS JOIN` keeps the parents as the outer loop).
//!
//! Only the columns a query needs are read ([`Columns`]); the others get an empty stand-in
//! of their type, so the rows still decode as the entity's model. Deployments, the many
//! rows of a nested read, are decoded by position and only in the columns read
//! ([`StandIns::decode`]).

use std::collections::HashMap;

use entity::deployment;
use sea_orm::sea_query::{
    Alias, Asterisk, Condition, Expr, ExprTrait, Func, JoinType, Query, SelectStatement, SimpleExpr,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, FromQueryResult, IdenStatic,
    Iterable, QueryFilter, QueryResult, QuerySelect, Statement, TryGetable,
};

use super::page::{PageArgs, PageRows, Paged, cursor_conditions, finish, sql_order};

/// Which columns of an entity a read needs, one bit per column in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Columns(u64);

impl Columns {
    pub const ALL: Columns = Columns(u64::MAX);

    /// Exactly `columns`.
    pub fn of<C: Iterable + IdenStatic>(columns: impl IntoIterator<Item = C>) -> Self {
        let mut bits = 0;
        for column in columns {
            if let Some(i) = C::iter().position(|c| c.as_str() == column.as_str()) {
                bits |= 1 << i;
            }
        }
        Columns(bits)
    }

    fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}

/// What stands in for a column a read leaves out; `None`: the column is always read (keys,
/// sort columns and enums, which have no empty value).
pub trait StandIns: Paged {
    fn stand_in(column: Self::Column) -> Option<SimpleExpr> {
        let _ = column;
        None
    }

    /// A row of a read of `columns` (every column in declaration order, stand-ins for the
    /// others).
    fn decode(row: &QueryResult, columns: Columns) -> Result<Self::Model, DbErr> {
        let _ = columns;
        Self::Model::from_query_result(row, "")
    }
}

impl StandIns for entity::repository::Entity {}
impl StandIns for entity::app::Entity {}

impl StandIns for deployment::Entity {
    fn stand_in(column: Self::Column) -> Option<SimpleExpr> {
        use deployment::Column;
        match column {
            Column::ImageTag | Column::ErrorSummary | Column::LogsPath => Some(Expr::val("")),
            Column::AssignedPort => Some(Expr::cust("CAST(NULL AS integer)")),
            Column::StartedAt | Column::EndedAt => {
                Some(Expr::cust("CAST(NULL AS timestamp with time zone)"))
            }
            Column::Id | Column::Status | Column::CreatedAt | Column::AppId => None,
        }
    }

    /// By position, and only the columns read: the derived decoder looks up every column by
    /// name and formats an error message for every NULL (each stand-in of an optional
    /// column), a tenth of a nested read's time.
    fn decode(row: &QueryResult, columns: Columns) -> Result<deployment::Model, DbErr> {
        use deployment::Column;
        fn read<T: TryGetable + Default>(
            row: &QueryResult,
            columns: Columns,
            column: Column,
        ) -> Result<T, DbErr> {
            let index = column as usize;
            if columns.contains(index) || deployment::Entity::stand_in(column).is_none() {
                row.try_get_by_index(index)
            } else {
                Ok(T::default())
            }
        }
        Ok(deployment::Model {
            id: row.try_get_by_index(Column::Id as usize)?,
            status: row.try_get_by_index(Column::Status as usize)?,
            image_tag: read(row, columns, Column::ImageTag)?,
            assigned_port: read(row, columns, Column::AssignedPort)?,
            created_at: row.try_get_by_index(Column::CreatedAt as usize)?,
            started_at: read(row, columns, Column::StartedAt)?,
            ended_at: read(row, columns, Column::EndedAt)?,
            error_summary: read(row, columns, Column::ErrorSummary)?,
            logs_path: read(row, columns, Column::LogsPath)?,
            app_id: row.try_get_by_index(Column::AppId as usize)?,
        })
    }
}

/// The select list: needed columns, and stand-ins named like the columns they replace.
fn select_list<E: StandIns>(select: &mut SelectStatement, table: Option<&str>, columns: Columns) {
    for (i, column) in E::Column::iter().enumerate() {
        let name = column.as_str();
        match E::stand_in(column).filter(|_| !columns.contains(i)) {
            Some(stand_in) => select.expr_as(stand_in, Alias::new(name)),
            None => match table {
                Some(table) => select.column((Alias::new(table), Alias::new(name))),
                None => select.column(Alias::new(name)),
            },
        };
    }
}

/// The same page for each of `parents` (rows whose `parent_column` is one of them).
pub async fn pages_per_parent<E: StandIns>(
    db: &impl ConnectionTrait,
    parent_column: E::Column,
    parent_of: fn(&E::Model) -> i64,
    parents: &[i64],
    filter: Condition,
    page: &PageArgs,
    columns: Columns,
) -> Result<HashMap<i64, PageRows<E::Model>>, DbErr>
where
    E::Model: FromQueryResult,
{
    let statement = page_statement::<E>(
        db.get_database_backend(),
        parent_column,
        parents,
        filter,
        page,
        columns,
    );
    let rows = db.query_all_raw(statement).await?;
    let mut grouped: HashMap<i64, Vec<E::Model>> = HashMap::new();
    for row in rows {
        let row = E::decode(&row, columns)?;
        grouped.entry(parent_of(&row)).or_default().push(row);
    }
    Ok(grouped
        .into_iter()
        .map(|(parent, rows)| (parent, finish(rows, page)))
        .collect())
}

/// The statement of [`pages_per_parent`]: its text is the same for any number of parents.
fn page_statement<E: StandIns>(
    backend: DatabaseBackend,
    parent_column: E::Column,
    parents: &[i64],
    filter: Condition,
    page: &PageArgs,
    columns: Columns,
) -> Statement {
    let table = E::default().table_name().to_owned();
    let parent = Alias::new("p");
    let parent_value = match backend {
        DatabaseBackend::Postgres => Expr::col((parent.clone(), parent.clone())),
        _ => Expr::col((parent.clone(), Alias::new("value"))),
    };
    let desc = page.read_desc();
    let sort = E::sort_column(page.order.key);

    // One parent's page: the top `limit + 1` of its rows, from the index.
    let mut top = Query::select();
    top.from(Alias::new(&table))
        .and_where(Expr::col(parent_column).eq(parent_value))
        .cond_where(filter)
        .cond_where(cursor_conditions::<E>(page));
    if let Some(sort) = sort {
        top.order_by(sort, sql_order(desc));
    }
    top.order_by(E::id_column(), sql_order(desc))
        .limit(page.limit + 1);

    let mut select = Query::select();
    let ids = parents
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let row = Alias::new("t");
    match backend {
        DatabaseBackend::Postgres => {
            select_list::<E>(&mut top, None, columns);
            select
                .column((row.clone(), Asterisk))
                .from_function(
                    Func::cust("unnest").arg(Expr::cust_with_values(
                        "CAST($1 AS bigint[])",
                        [format!("{{{ids}}}")],
                    )),
                    parent.clone(),
                )
                .join_lateral(JoinType::InnerJoin, top, row.clone(), Expr::cust("TRUE"));
        }
        _ => {
            top.column(E::id_column());
            // The outer rows are `t`, so that no name in the subquery can mean them.
            select_list::<E>(&mut select, Some("t"), columns);
            select
                .from_function(
                    Func::cust("json_each").arg(Expr::val(format!("[{ids}]"))),
                    parent.clone(),
                )
                // CROSS JOIN fixes the loop order (SQLite's rule): parents outside, rows
                // by rowid inside. Left to itself, SQLite 3.51 scans the whole table in
                // index order to skip the final sort: 400 ms instead of 0.3 ms for 50
                // parents of 5,000.
                .join_as(
                    JoinType::CrossJoin,
                    Alias::new(&table),
                    row.clone(),
                    Condition::all(),
                )
                // (A CROSS JOIN has no ON: the condition goes in WHERE.)
                .and_where(Expr::col((row.clone(), E::id_column())).in_subquery(top));
        }
    }
    let rows_of = |column| Expr::col((row.clone(), column));
    select.order_by_expr(rows_of(parent_column), sql_order(false));
    if let Some(sort) = sort {
        select.order_by_expr(rows_of(sort), sql_order(desc));
    }
    select.order_by_expr(rows_of(E::id_column()), sql_order(desc));
    backend.build(&select)
}

#[derive(FromQueryResult)]
struct ParentCount {
    parent: i64,
    n: i64,
}

/// How many rows of each parent match `filter`: `SELECT parent, COUNT(*) … GROUP BY parent`.
pub async fn counts_per_parent<E: EntityTrait>(
    db: &impl ConnectionTrait,
    parent_column: E::Column,
    parents: &[i64],
    filter: Condition,
) -> Result<HashMap<i64, u64>, DbErr> {
    let counts = E::find()
        .select_only()
        .column_as(parent_column, "parent")
        .column_as(Expr::col(parent_column).count(), "n")
        .filter(parent_column.is_in(parents.iter().copied()))
        .filter(filter)
        .group_by(parent_column)
        .into_model::<ParentCount>()
        .all(db)
        .await?;
    Ok(counts.into_iter().map(|c| (c.parent, c.n as u64)).collect())
}

#[cfg(test)]
mod tests {
    use entity::deployment::{Column, DeploymentStatus, Entity};
    use sea_orm::{ColumnTrait, Condition, DatabaseBackend};

    use super::*;
    use crate::store::page::{Order, SortKey};

    fn statement(backend: DatabaseBackend, parents: &[i64]) -> Statement {
        page_statement::<Entity>(
            backend,
            Column::AppId,
            parents,
            Condition::all().add(Column::Status.is_in([DeploymentStatus::Failed])),
            &PageArgs::first(
                10,
                Order {
                    key: SortKey::CreatedAt,
                    desc: true,
                },
            ),
            Columns::of([Column::ImageTag]),
        )
    }

    /// One prepared statement for every batch size: the ids are one parameter.
    #[test]
    fn the_statement_does_not_depend_on_the_number_of_parents() {
        for backend in [DatabaseBackend::Postgres, DatabaseBackend::Sqlite] {
            let few = statement(backend, &[1, 2]);
            let many = statement(backend, &(1..=250).collect::<Vec<_>>());
            assert_eq!(few.sql, many.sql, "{backend:?}");
            let count = |s: &Statement| s.values.as_ref().map_or(0, |v| v.0.len());
            assert_eq!(count(&few), count(&many), "{backend:?}");
            // Of the optional columns, only the selected one is read.
            assert!(few.sql.contains("\"image_tag\""), "{}", few.sql);
            assert!(few.sql.contains("AS \"error_summary\""), "{}", few.sql);
        }
        assert!(
            statement(DatabaseBackend::Postgres, &[1])
                .sql
                .contains("LATERAL")
        );
        let sqlite = statement(DatabaseBackend::Sqlite, &[1]).sql;
        assert!(
            sqlite.contains("FROM json_each(?) AS \"p\" CROSS JOIN"),
            "{sqlite}"
        );
    }
}
