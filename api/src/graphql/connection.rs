//! Relay cursor connections over [`crate::store::page`]: the GraphQL order direction, the
//! cursor as a connection cursor, page arguments checked into store inputs, and a page of
//! rows as a `Connection`. Nested connections read their page through a loader
//! ([`crate::store::nested`]); `totalCount` is a separate `COUNT` that runs only when the
//! field is selected.

use async_graphql::connection::{Connection, CursorType, Edge};
use async_graphql::{Enum, ErrorExtensions, OutputType};

use super::error::bad_input;
pub use crate::store::page::{
    Cursor, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Order, PageArgs, PageError, PageRows, Paged, SortKey,
    SortValue,
};

/// Which way to order.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OrderDirection {
    /// Ascending: smallest first.
    #[default]
    Asc,
    /// Descending: largest first.
    Desc,
}

/// `key` in `direction`.
pub fn order(key: SortKey, direction: OrderDirection) -> Order {
    Order {
        key,
        desc: direction == OrderDirection::Desc,
    }
}

impl CursorType for Cursor {
    type Error = String;

    fn decode_cursor(s: &str) -> Result<Self, Self::Error> {
        Cursor::decode(s)
    }

    fn encode_cursor(&self) -> String {
        self.encode()
    }
}

impl ErrorExtensions for PageError {
    fn extend(&self) -> async_graphql::Error {
        bad_input(self.field, self.message.clone())
    }
}

/// The page that `first/after/last/before` ask for, in `order`.
pub fn page_args(
    first: Option<i32>,
    after: Option<String>,
    last: Option<i32>,
    before: Option<String>,
    order: Order,
) -> async_graphql::Result<PageArgs> {
    PageArgs::new(first, after.as_deref(), last, before.as_deref(), order).map_err(|e| e.extend())
}

/// The fields selected on the nodes of the connection `ctx` resolves (under `nodes` and
/// under `edges { node }`), fragments included.
pub fn node_fields<'a>(
    ctx: &'a async_graphql::Context<'a>,
) -> Vec<async_graphql::SelectionField<'a>> {
    let mut fields = Vec::new();
    for child in ctx.field().selection_set() {
        match child.name() {
            "nodes" => fields.extend(child.selection_set()),
            "edges" => fields.extend(
                child
                    .selection_set()
                    .filter(|f| f.name() == "node")
                    .flat_map(|node| node.selection_set().collect::<Vec<_>>()),
            ),
            _ => {}
        }
    }
    fields
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
    let (has_previous, has_next) = page_rows.has_previous_and_next(page);
    let mut connection = Connection::with_additional_fields(has_previous, has_next, total_count);
    connection.edges = page_rows
        .rows
        .into_iter()
        .map(|row| Edge::new(E::cursor(&row, page.order.key), node(row)))
        .collect();
    connection
}
