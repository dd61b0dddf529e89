//! A role's reach, checked on the document before anything runs: every field an operation
//! selects, at any depth, in fragments too, must be one [`may_reach`] allows the caller's
//! role, or the request fails as a whole with `FORBIDDEN`, its `extensions.field` naming the
//! first such field (`Deployment.app`).
//!
//! Checked on the document rather than per resolved field: a refused request runs nothing
//! (a runner's mutation that also asks for what it may not read does not happen), and
//! execution carries no per-field hook. A field selected on an interface (or in a fragment
//! on one) is checked against every object type the value may have there. `@skip` and
//! `@include` are honoured; introspection fields are not checked. A mutation's payload is
//! left to the mutation's guard, which audits its refusals; what the payload holds is checked. The document has passed
//! [`super::guardrails::check_document`]: every fragment spread names a known fragment, none
//! spreads itself, and its expanded size is bounded, so a walk through it is too; besides,
//! each fragment is walked once per set of object types it applies to.

use std::collections::HashSet;

use async_graphql::parser::types::{
    ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::registry::Registry;
use async_graphql::{ServerError, ServerResult, Variables};
use entity::api_token::Role;
use sea_orm::ActiveEnum;

use super::auth::may_reach;
use super::conformance::{field_type, root_type, skipped};
use super::error::Code;

/// `Ok` when `role` may read everything `operation` selects; `FORBIDDEN` otherwise.
pub fn check_reach(
    registry: &Registry,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
    role: Role,
) -> ServerResult<()> {
    if role == Role::Admin {
        return Ok(());
    }
    let Some(root) = root_type(registry, operation.ty) else {
        return Ok(());
    };
    Walk {
        registry,
        document,
        variables,
        role,
        checked: HashSet::new(),
        payload: None,
    }
    .selection_set(&[root], &operation.selection_set.node)
}

struct Walk<'a> {
    registry: &'a Registry,
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    role: Role,
    /// Fragments already found within reach, with the object types they were checked on:
    /// a fragment spread many times over is walked once per set of types.
    checked: HashSet<(&'a str, Vec<&'a str>)>,
    /// The payload type of the mutation being walked: the mutation's own guard decides who
    /// gets it (and a refusal there is audited), so its fields are not checked here; what
    /// it holds is.
    payload: Option<&'a str>,
}

impl<'a> Walk<'a> {
    /// `set`, selected on an object whose type is one of `types` (all object types).
    fn selection_set(&mut self, types: &[&'a str], set: &'a SelectionSet) -> ServerResult<()> {
        for item in &set.items {
            if skipped(item.node.directives(), self.variables) {
                continue;
            }
            match &item.node {
                Selection::Field(field) => self.field(types, &field.node)?,
                Selection::InlineFragment(fragment) => {
                    let fragment = &fragment.node;
                    let types = match &fragment.type_condition {
                        Some(condition) => self.narrow(types, &condition.node.on.node),
                        None => types.to_vec(),
                    };
                    self.selection_set(&types, &fragment.selection_set.node)?;
                }
                Selection::FragmentSpread(spread) => {
                    // Unknown fragments were refused by `check_document`.
                    let name = &spread.node.fragment_name.node;
                    if let Some((name, fragment)) = self.document.fragments.get_key_value(name) {
                        let types = self.narrow(types, &fragment.node.type_condition.node.on.node);
                        let key = (name.as_str(), types);
                        if !self.checked.contains(&key) {
                            self.selection_set(&key.1, &fragment.node.selection_set.node)?;
                            self.checked.insert(key);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn field(&mut self, types: &[&'a str], field: &'a Field) -> ServerResult<()> {
        let name = field.name.node.as_str();
        if name.starts_with("__") {
            return Ok(());
        }
        let mut returns = None;
        for type_name in types {
            if self.payload != Some(*type_name) && !may_reach(self.role, type_name, name) {
                let mut error = ServerError::new(
                    format!(
                        "the {} role may not read {type_name}.{name}",
                        self.role.to_value()
                    ),
                    Some(field.name.pos),
                );
                let extensions = error.extensions.get_or_insert_with(Default::default);
                Code::Forbidden.set(extensions);
                extensions.set("field", format!("{type_name}.{name}"));
                return Err(error);
            }
            returns = returns.or_else(|| {
                let parent = self.registry.types.get(*type_name)?;
                field_type(self.registry, parent, name)
            });
        }
        if types == [self.registry.mutation_type.as_deref().unwrap_or_default()] {
            self.payload = returns;
        }
        // An unknown field is validation's to report.
        match returns {
            Some(returns) if !field.selection_set.node.items.is_empty() => {
                self.selection_set(&self.objects(returns), &field.selection_set.node)
            }
            _ => Ok(()),
        }
    }

    /// The object types a value of `type_name` may have.
    fn objects(&self, type_name: &'a str) -> Vec<&'a str> {
        match self
            .registry
            .types
            .get(type_name)
            .and_then(|t| t.possible_types())
        {
            Some(possible) => possible.iter().map(String::as_str).collect(),
            None => vec![type_name],
        }
    }

    /// Those of `types` a fragment on `condition` applies to.
    fn narrow(&self, types: &[&'a str], condition: &str) -> Vec<&'a str> {
        types
            .iter()
            .copied()
            .filter(|t| {
                *t == condition
                    || self
                        .registry
                        .types
                        .get(condition)
                        .is_some_and(|c| c.is_possible_type(t))
            })
            .collect()
    }
}
