//! Keyset pages: which slice of an ordered table to read, the cursor that marks a position,
//! and one page of a filtered table.
//!
//! A page is fetched with keyset conditions on the ordering column and the id (stable under
//! inserts, no OFFSET), one row more than asked to learn whether more follow, without
//! counting.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entity::Timestamp;
use entity::{api_token, app, audit_event, deployment, repository};
use sea_orm::sea_query::Order as SqlOrder;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Related, Select, Value,
};
use serde_json::json;

use super::filters::FilterCondition;

/// Page size when neither `first` nor `last` is given.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// The largest `first` or `last` accepted.
pub const MAX_PAGE_SIZE: u64 = 100;

/// The value a table is ordered by (the id always breaks ties).
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

/// A position in an ordered table: the row's sort value and id. Opaque to clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub value: SortValue,
    pub id: i64,
}

impl Cursor {
    /// Reads a cursor written by [`Cursor::encode`]; `Err` says why not.
    pub fn decode(s: &str) -> Result<Self, String> {
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

    pub fn encode(&self) -> String {
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

/// Pagination arguments that make no sense, and which argument is at fault.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PageError {
    pub field: &'static str,
    pub message: String,
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
        after: Option<&str>,
        last: Option<i32>,
        before: Option<&str>,
        order: Order,
    ) -> Result<Self, PageError> {
        let error = |field, message: String| PageError { field, message };
        let size = |n: i32, field: &'static str| {
            u64::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_PAGE_SIZE)
                .ok_or_else(|| {
                    error(
                        field,
                        format!("{field} must be between 0 and {MAX_PAGE_SIZE} (got {n})"),
                    )
                })
        };
        let (limit, backward) = match (first, last) {
            (Some(_), Some(_)) => {
                return Err(error(
                    "last",
                    "pass first (with after) or last (with before), not both".to_owned(),
                ));
            }
            (Some(n), None) => (size(n, "first")?, false),
            (None, Some(n)) => (size(n, "last")?, true),
            (None, None) => (DEFAULT_PAGE_SIZE, false),
        };
        let cursor = |raw: Option<&str>, field: &'static str| -> Result<_, PageError> {
            let Some(raw) = raw else { return Ok(None) };
            let cursor = Cursor::decode(raw).map_err(|e| error(field, e))?;
            if cursor.value.key() != order.key {
                return Err(error(
                    field,
                    "this cursor comes from a connection with another orderBy".to_owned(),
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
    pub(super) fn read_desc(&self) -> bool {
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

impl<M> PageRows<M> {
    /// Whether a page comes before this one, and whether one comes after.
    pub fn has_previous_and_next(&self, page: &PageArgs) -> (bool, bool) {
        if page.backward {
            (self.has_more, page.before.is_some())
        } else {
            (page.after.is_some(), self.has_more)
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
pub(super) fn cursor_conditions<E: Paged>(page: &PageArgs) -> Condition {
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

pub(super) fn sql_order(desc: bool) -> SqlOrder {
    if desc { SqlOrder::Desc } else { SqlOrder::Asc }
}

/// Trims the extra row and restores connection order.
pub(super) fn finish<M>(mut rows: Vec<M>, page: &PageArgs) -> PageRows<M> {
    let has_more = rows.len() as u64 > page.limit;
    rows.truncate(page.limit as usize);
    if page.backward {
        rows.reverse();
    }
    PageRows { rows, has_more }
}

/// The statement for one page of the rows of `E` that match `filter` (one row more than
/// the page, to tell whether more follow), in reading order.
fn page_select<E: Paged>(filter: &impl FilterCondition, page: &PageArgs) -> Select<E> {
    let desc = page.read_desc();
    let mut select = E::find()
        .filter(filter.condition())
        .filter(cursor_conditions::<E>(page));
    if let Some(sort) = E::sort_column(page.order.key) {
        select = select.order_by(sort, sql_order(desc));
    }
    select
        .order_by(E::id_column(), sql_order(desc))
        .limit(page.limit + 1)
}

/// One page of the rows of `E` that match `filter`.
pub async fn load_page<E: Paged>(
    db: &impl ConnectionTrait,
    filter: &impl FilterCondition,
    page: &PageArgs,
) -> Result<PageRows<E::Model>, DbErr> {
    Ok(finish(page_select::<E>(filter, page).all(db).await?, page))
}

/// One page of the rows of `E` that match `filter`, each with the `R` it belongs to, read in
/// the same statement (a join).
pub async fn load_page_with<E, R>(
    db: &impl ConnectionTrait,
    filter: &impl FilterCondition,
    page: &PageArgs,
) -> Result<PageRows<(E::Model, Option<R::Model>)>, DbErr>
where
    E: Paged + Related<R>,
    R: EntityTrait,
{
    let rows = page_select::<E>(filter, page)
        .find_also_related(R::default())
        .all(db)
        .await?;
    Ok(finish(rows, page))
}

/// Repositories and apps are ordered by id or by name.
fn name_or_id_cursor(key: SortKey, name: &str, id: i64) -> Cursor {
    let value = match key {
        SortKey::Name => SortValue::Name(name.to_owned()),
        SortKey::Id | SortKey::CreatedAt => SortValue::Id,
    };
    Cursor { value, id }
}

impl Paged for repository::Entity {
    fn id_column() -> Self::Column {
        repository::Column::Id
    }
    fn sort_column(key: SortKey) -> Option<Self::Column> {
        match key {
            SortKey::Name => Some(repository::Column::Name),
            SortKey::Id | SortKey::CreatedAt => None,
        }
    }
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor {
        name_or_id_cursor(key, &model.name, model.id)
    }
}

impl Paged for app::Entity {
    fn id_column() -> Self::Column {
        app::Column::Id
    }
    fn sort_column(key: SortKey) -> Option<Self::Column> {
        match key {
            SortKey::Name => Some(app::Column::Name),
            SortKey::Id | SortKey::CreatedAt => None,
        }
    }
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor {
        name_or_id_cursor(key, &model.name, model.id)
    }
}

impl Paged for deployment::Entity {
    fn id_column() -> Self::Column {
        deployment::Column::Id
    }
    fn sort_column(key: SortKey) -> Option<Self::Column> {
        match key {
            SortKey::CreatedAt => Some(deployment::Column::CreatedAt),
            SortKey::Id | SortKey::Name => None,
        }
    }
    fn cursor(model: &Self::Model, key: SortKey) -> Cursor {
        let value = match key {
            SortKey::CreatedAt => SortValue::CreatedAt(model.created_at),
            SortKey::Id | SortKey::Name => SortValue::Id,
        };
        Cursor {
            value,
            id: model.id,
        }
    }
}

/// Tokens and audit events are ordered by id only.
macro_rules! paged_by_id {
    ($($entity:ident),*) => {$(
        impl Paged for $entity::Entity {
            fn id_column() -> Self::Column {
                $entity::Column::Id
            }
            fn sort_column(_: SortKey) -> Option<Self::Column> {
                None
            }
            fn cursor(model: &Self::Model, _: SortKey) -> Cursor {
                Cursor {
                    value: SortValue::Id,
                    id: model.id,
                }
            }
        }
    )*};
}

paged_by_id!(api_token, audit_event);
