//! Relay cursor connections, paginated in SQL.
//!
//! A page is fetched with keyset conditions on the ordering column and the id (stable under
//! inserts, no OFFSET), one row more than asked to learn `hasNextPage` without counting.
//! Nested connections fetch "first N per parent" for all parents in one statement with
//! `ROW_NUMBER() OVER (PARTITION BY parent …)`, on SQLite and PostgreSQL alike.
//! `totalCount` is a separate `COUNT` that runs only when the field is selected.

use std::collections::HashMap;

use async_graphql::connection::{Connection, CursorType, Edge};
use async_graphql::{Enum, OutputType};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entity::Timestamp;
use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Order as SqlOrder, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, IdenStatic,
    Iterable, QueryFilter, QueryOrder, QuerySelect, Select, Value,
};
use serde_json::json;

use super::error::bad_input;

/// Page size when neither `first` nor `last` is given.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// The largest `first` or `last` accepted.
pub const MAX_PAGE_SIZE: u64 = 100;

/// Which way to order.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OrderDirection {
    /// Ascending: smallest first.
    #[default]
    Asc,
    /// Descending: largest first.
    Desc,
}

/// The value a connection is ordered by (the id always breaks ties).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortKey {
    Id,
    Name,
    CreatedAt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Order {
    pub key: SortKey,
    pub desc: bool,
}

impl Order {
    pub fn new(key: SortKey, direction: OrderDirection) -> Self {
        Self {
            key,
            desc: direction == OrderDirection::Desc,
        }
    }
}

/// The sort value of a row, as carried in its cursor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SortValue {
    Id,
    Name(String),
    CreatedAt(Timestamp),
}

impl SortValue {
    fn key(&self) -> SortKey {
        match self {
            SortValue::Id => SortKey::Id,
            SortValue::Name(_) => SortKey::Name,
            SortValue::CreatedAt(_) => SortKey::CreatedAt,
        }
    }

    fn sql(&self) -> Option<Value> {
        match self {
            SortValue::Id => None,
            SortValue::Name(name) => Some(name.clone().into()),
            SortValue::CreatedAt(ts) => Some((*ts).into()),
        }
    }
}

/// A position in a connection: the row's sort value and id. Opaque to clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub value: SortValue,
    pub id: i64,
}

impl CursorType for Cursor {
    type Error = String;

    fn decode_cursor(s: &str) -> Result<Self, Self::Error> {
        let invalid = || format!("{s:?} is not a valid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
        let parsed: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let id = parsed["id"].as_i64().ok_or_else(invalid)?;
        let value = match (parsed["key"].as_str(), &parsed["v"]) {
            (Some("id"), _) => SortValue::Id,
            (Some("name"), serde_json::Value::String(name)) => SortValue::Name(name.clone()),
            (Some("createdAt"), serde_json::Value::String(at)) => SortValue::CreatedAt(
                chrono::DateTime::parse_from_rfc3339(at)
                    .map_err(|_| invalid())?
                    .to_utc()
                    .into(),
            ),
            _ => return Err(invalid()),
        };
        Ok(Cursor { value, id })
    }

    fn encode_cursor(&self) -> String {
        let body = match &self.value {
            SortValue::Id => json!({ "key": "id", "id": self.id }),
            SortValue::Name(name) => json!({ "key": "name", "v": name, "id": self.id }),
            SortValue::CreatedAt(at) => json!({
                "key": "createdAt",
                "v": at.as_utc().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "id": self.id,
            }),
        };
        URL_SAFE_NO_PAD.encode(body.to_string())
    }
}

/// Validated `first/after/last/before` plus the ordering: which slice to fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PageArgs {
    pub limit: u64,
    /// `last` was given: the page ends at `before` (or at the end).
    pub backward: bool,
    pub after: Option<Cursor>,
    pub before: Option<Cursor>,
    pub order: Order,
}

impl PageArgs {
    pub fn new(
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        order: Order,
    ) -> async_graphql::Result<Self> {
        let size = |n: i32, field: &str| {
            u64::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_PAGE_SIZE)
                .ok_or_else(|| {
                    bad_input(
                        field,
                        format!("{field} must be between 0 and {MAX_PAGE_SIZE} (got {n})"),
                    )
                })
        };
        let (limit, backward) = match (first, last) {
            (Some(_), Some(_)) => {
                return Err(bad_input(
                    "last",
                    "pass first (with after) or last (with before), not both",
                ));
            }
            (Some(n), None) => (size(n, "first")?, false),
            (None, Some(n)) => (size(n, "last")?, true),
            (None, None) => (DEFAULT_PAGE_SIZE, false),
        };
        let cursor = |raw: Option<String>, field: &str| -> async_graphql::Result<Option<Cursor>> {
            let Some(raw) = raw else { return Ok(None) };
            let cursor = Cursor::decode_cursor(&raw).map_err(|e| bad_input(field, e))?;
            if cursor.value.key() != order.key {
                return Err(bad_input(
                    field,
                    "this cursor comes from a connection with another orderBy",
                ));
            }
            Ok(Some(cursor))
        };
        Ok(Self {
            limit,
            backward,
            after: cursor(after, "after")?,
            before: cursor(before, "before")?,
            order,
        })
    }

    /// The first `limit` rows in `order`.
    pub fn first(limit: u64, order: Order) -> Self {
        Self {
            limit,
            backward: false,
            after: None,
            before: None,
            order,
        }
    }

    /// Whether rows are read in descending order (reversed for `last`).
    fn read_desc(&self) -> bool {
        self.order.desc != self.backward
    }
}

/// How a paginated entity exposes its ordering columns and cursors.
pub trait Paged: EntityTrait {
    fn id_column() -> Self::Column;
    fn sort_column(key: SortKey) -> Option<Self::Column>;
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor;
}

/// The rows of one page, in connection order, and whether more follow in the direction of
/// travel.
#[derive(Clone, Debug)]
pub struct PageRows<M> {
    pub rows: Vec<M>,
    pub has_more: bool,
}

impl<M> Default for PageRows<M> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            has_more: false,
        }
    }
}

/// `(sort > v) OR (sort = v AND id > id0)` (or `<` for `greater == false`).
fn keyset_condition<E: Paged>(cursor: &Cursor, key: SortKey, greater: bool) -> Condition {
    let id = E::id_column();
    let cmp = |col: E::Column, value: Value| {
        if greater {
            col.gt(value)
        } else {
            col.lt(value)
        }
    };
    match (E::sort_column(key), cursor.value.sql()) {
        (Some(sort), Some(value)) => Condition::any().add(cmp(sort, value.clone())).add(
            Condition::all()
                .add(sort.eq(value))
                .add(cmp(id, cursor.id.into())),
        ),
        _ => Condition::all().add(cmp(id, cursor.id.into())),
    }
}

/// The conditions `after`/`before` put on rows, whatever the direction of travel.
fn cursor_conditions<E: Paged>(page: &PageArgs) -> Condition {
    let mut condition = Condition::all();
    // In ascending order, rows after the cursor are greater than it.
    if let Some(after) = &page.after {
        condition = condition.add(keyset_condition::<E>(
            after,
            page.order.key,
            !page.order.desc,
        ));
    }
    if let Some(before) = &page.before {
        condition = condition.add(keyset_condition::<E>(
            before,
            page.order.key,
            page.order.desc,
        ));
    }
    condition
}

fn sql_order(desc: bool) -> SqlOrder {
    if desc { SqlOrder::Desc } else { SqlOrder::Asc }
}

/// Trims the extra row and restores connection order.
fn finish<M>(mut rows: Vec<M>, page: &PageArgs) -> PageRows<M> {
    let has_more = rows.len() as u64 > page.limit;
    rows.truncate(page.limit as usize);
    if page.backward {
        rows.reverse();
    }
    PageRows { rows, has_more }
}

/// One page of `select` (already filtered).
pub async fn load_page<E: Paged>(
    db: &impl ConnectionTrait,
    select: Select<E>,
    page: &PageArgs,
) -> Result<PageRows<E::Model>, DbErr> {
    let desc = page.read_desc();
    let mut select = select.filter(cursor_conditions::<E>(page));
    if let Some(sort) = E::sort_column(page.order.key) {
        select = select.order_by(sort, sql_order(desc));
    }
    let rows = select
        .order_by(E::id_column(), sql_order(desc))
        .limit(page.limit + 1)
        .all(db)
        .await?;
    Ok(finish(rows, page))
}

/// The same page for each of `parents` (rows whose `parent_column` is one of them), in one
/// statement: a `ROW_NUMBER()` window partitioned by parent keeps `limit + 1` rows each.
pub async fn load_pages_per_parent<E: Paged>(
    db: &impl ConnectionTrait,
    parent_column: E::Column,
    parent_of: fn(&E::Model) -> i64,
    parents: &[i64],
    filter: Condition,
    page: &PageArgs,
) -> Result<HashMap<i64, PageRows<E::Model>>, DbErr>
where
    E::Model: FromQueryResult,
{
    let direction = if page.read_desc() { "DESC" } else { "ASC" };
    let mut window_order = Vec::new();
    if let Some(sort) = E::sort_column(page.order.key) {
        window_order.push(format!("\"{}\" {direction}", sort.as_str()));
    }
    window_order.push(format!("\"{}\" {direction}", E::id_column().as_str()));
    let window = format!(
        "ROW_NUMBER() OVER (PARTITION BY \"{}\" ORDER BY {})",
        parent_column.as_str(),
        window_order.join(", ")
    );
    let mut inner = Query::select();
    inner
        .columns(E::Column::iter())
        .expr_as(Expr::cust(window), Alias::new("keystone_rn"))
        .from(E::default())
        .cond_where(parent_column.is_in(parents.iter().copied()))
        .cond_where(filter)
        .cond_where(cursor_conditions::<E>(page));
    let mut outer = Query::select();
    outer
        .column(Asterisk)
        .from_subquery(inner, Alias::new("page"))
        .and_where(Expr::col(Alias::new("keystone_rn")).lte(page.limit + 1))
        .order_by(Alias::new(parent_column.as_str()), SqlOrder::Asc)
        .order_by(Alias::new("keystone_rn"), SqlOrder::Asc);
    let rows = E::Model::find_by_statement(db.get_database_backend().build(&outer))
        .all(db)
        .await?;
    let mut grouped: HashMap<i64, Vec<E::Model>> = HashMap::new();
    for row in rows {
        grouped.entry(parent_of(&row)).or_default().push(row);
    }
    Ok(grouped
        .into_iter()
        .map(|(parent, rows)| (parent, finish(rows, page)))
        .collect())
}

/// Builds the GraphQL connection for a page of rows.
pub fn to_connection<E, N, F>(
    page_rows: PageRows<E::Model>,
    page: &PageArgs,
    total_count: F,
    node: impl Fn(E::Model) -> N,
) -> Connection<Cursor, N, F>
where
    E: Paged,
    N: OutputType,
    F: async_graphql::ObjectType,
{
    let (has_previous, has_next) = if page.backward {
        (page_rows.has_more, page.before.is_some())
    } else {
        (page.after.is_some(), page_rows.has_more)
    };
    let mut connection = Connection::with_additional_fields(has_previous, has_next, total_count);
    connection.edges = page_rows
        .rows
        .into_iter()
        .map(|row| Edge::new(E::cursor(&row, page.order.key), node(row)))
        .collect();
    connection
}
