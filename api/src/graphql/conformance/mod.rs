//! Where async-graphql departs from the GraphQL specification, put right around it, over
//! HTTP and WebSocket alike (by [`super::engine`], around every request):
//!
//! - **Variable coercion** ([`check_variables`]): a request whose variables cannot be
//!   coerced to their declared types is a *request error* (spec §6.1, CoerceVariableValues):
//!   nothing executes. async-graphql checks a variable only where an argument uses it, and
//!   not at all when it is missing, so a missing `ID!` used to run the rest of the query.
//! - **Response key order** ([`Ordering`]): the keys of every object follow the selection
//!   set (spec §7.2.2, "Serialized Map Ordering"). async-graphql resolves the fields of a
//!   query concurrently and inserts each value as it completes, so a field waiting on a
//!   loader, or a root field of another part of a merged object, came out later than written
//!   (async-graphql issue 612). The response is put back in order after execution.
//!
//! For an object of an abstract type (an interface such as `Node`), which fragments apply
//! depends on its concrete type, so the document is given one extra `__typename` under a
//! reserved alias in such selection sets ([`mark_abstract_selections`]); the ordering reads
//! and removes it.

mod order;
mod variables;

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, OperationDefinition,
};
use async_graphql::registry::Registry;
use async_graphql::{Response, Value, Variables};

pub use self::order::{field_type, mark_abstract_selections, root_type};
pub use self::variables::check as check_variables;

/// What putting one response in order needs: the document as executed (its abstract
/// selections marked), the operation's name and the variables (for `@skip`/`@include`).
pub struct Ordering {
    pub document: std::sync::Arc<ExecutableDocument>,
    pub operation_name: Option<String>,
    pub variables: Variables,
}

impl Ordering {
    /// Rewrites `response`'s data in selection-set order.
    pub fn reorder(&self, registry: &Registry, response: &mut Response) {
        if let Some(operation) = select_operation(&self.document, self.operation_name.as_deref()) {
            order::reorder(
                registry,
                &self.document,
                operation,
                &self.variables,
                &mut response.data,
            );
        }
    }
}

/// The operation a request runs: the named one, or the only one.
pub fn select_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| &op.node)
        }
        _ => None,
    }
}

/// `@skip(if: true)` or `@include(if: false)`, as async-graphql evaluates them.
pub fn skipped(directives: &[Positioned<Directive>], variables: &Variables) -> bool {
    directives.iter().any(|directive| {
        let include = match directive.node.name.node.as_str() {
            "skip" => false,
            "include" => true,
            _ => return false,
        };
        let Some(condition) = directive.node.get_argument("if") else {
            return false;
        };
        let condition = condition
            .node
            .clone()
            .into_const_with(|name| variables.get(&name).cloned().ok_or(()));
        matches!(condition, Ok(Value::Boolean(true))) != include
    })
}
