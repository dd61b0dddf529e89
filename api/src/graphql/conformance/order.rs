//! Puts a response's keys in the order of the selection set (CollectFields, spec §6.3.2).
//!
//! For each object of the response, the fields of its selection sets are collected as
//! the specification does: in document order, fragments expanded where their type
//! condition applies to the object's type, `@skip`/`@include` honoured, a response key
//! first seen wins. Its keys are then rewritten in that order, and each value visited with
//! the merged sub-selections of its key. The plan for one (type, selection sets) pair is
//! built once and reused for every item of a list.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::registry::{MetaType, MetaTypeName, Registry};
use async_graphql::{Name, Value, Variables};

/// The alias under which abstract selection sets get their object's `__typename`.
const TYPENAME: &str = "__keystoneTypename";

/// Adds `__keystoneTypename: __typename` to every selection set on an interface or union.
pub fn mark_abstract_selections(registry: &Registry, document: &mut ExecutableDocument) {
    let operations: Vec<&mut Positioned<OperationDefinition>> = match &mut document.operations {
        DocumentOperations::Single(op) => vec![op],
        DocumentOperations::Multiple(ops) => ops.values_mut().collect(),
    };
    for operation in operations {
        if let Some(root) = root_type(registry, operation.node.ty) {
            mark(registry, root, &mut operation.node.selection_set.node);
        }
    }
    for fragment in document.fragments.values_mut() {
        let on = fragment.node.type_condition.node.on.node.clone();
        mark(registry, &on, &mut fragment.node.selection_set.node);
    }
}

fn mark(registry: &Registry, parent: &str, set: &mut SelectionSet) {
    let Some(parent_type) = registry.types.get(parent) else {
        return;
    };
    for item in &mut set.items {
        match &mut item.node {
            Selection::Field(field) => {
                let field = &mut field.node;
                if let Some(child) = field_type(registry, parent_type, &field.name.node) {
                    mark(registry, child, &mut field.selection_set.node);
                }
            }
            Selection::InlineFragment(fragment) => {
                let on = fragment
                    .node
                    .type_condition
                    .as_ref()
                    .map_or(parent.to_owned(), |c| c.node.on.node.to_string());
                mark(registry, &on, &mut fragment.node.selection_set.node);
            }
            Selection::FragmentSpread(_) => {}
        }
    }
    if parent_type.is_abstract() {
        let at = set.items.first().map(|i| i.pos).unwrap_or_default();
        let name = |s: &str| Positioned::new(Name::new(s), at);
        set.items.push(Positioned::new(
            Selection::Field(Positioned::new(
                Field {
                    alias: Some(name(TYPENAME)),
                    name: name("__typename"),
                    arguments: Vec::new(),
                    directives: Vec::new(),
                    selection_set: Positioned::new(SelectionSet::default(), at),
                },
                at,
            )),
            at,
        ));
    }
}

/// Rewrites `data` (the result of `operation`) in selection-set order.
pub fn reorder(
    registry: &Registry,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
    data: &mut Value,
) {
    let Some(root) = root_type(registry, operation.ty) else {
        return;
    };
    let mut orderer = Orderer {
        registry,
        document,
        variables,
        plans: HashMap::new(),
    };
    orderer.value(root, &[&operation.selection_set.node], data);
}

pub fn root_type(registry: &Registry, ty: OperationType) -> Option<&str> {
    match ty {
        OperationType::Query => Some(registry.query_type.as_str()),
        OperationType::Mutation => registry.mutation_type.as_deref(),
        OperationType::Subscription => registry.subscription_type.as_deref(),
    }
}

/// The named type a field returns (lists and non-null stripped).
pub fn field_type<'r>(
    registry: &'r Registry,
    parent: &'r MetaType,
    field: &str,
) -> Option<&'r str> {
    match field {
        "__schema" => Some("__Schema"),
        "__type" => Some("__Type"),
        _ => parent
            .field_by_name(field)
            .map(|f| MetaTypeName::concrete_typename(&f.ty)),
    }
    .filter(|name| registry.types.contains_key(*name))
}

/// The keys of one object type's response, in order, each with what to do with its value.
struct Plan<'a> {
    keys: Vec<(&'a str, Option<Child<'a>>)>,
}

struct Child<'a> {
    type_name: &'a str,
    sets: Vec<&'a SelectionSet>,
}

type PlanKey<'a> = (&'a str, Vec<*const SelectionSet>);

struct Orderer<'a> {
    registry: &'a Registry,
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    plans: HashMap<PlanKey<'a>, Rc<Plan<'a>>>,
}

impl<'a> Orderer<'a> {
    fn value(&mut self, type_name: &'a str, sets: &[&'a SelectionSet], value: &mut Value) {
        match value {
            Value::List(items) => {
                // The items of a list of objects share one plan (abstract types excepted).
                let concrete = self
                    .registry
                    .types
                    .get(type_name)
                    .is_some_and(|t| !t.is_abstract());
                let plan = concrete.then(|| self.plan(type_name, sets));
                for item in items {
                    match (item, &plan) {
                        (Value::Object(map), Some(plan)) => self.apply(plan, map),
                        (item, _) => self.value(type_name, sets, item),
                    }
                }
            }
            Value::Object(map) => self.object(type_name, sets, map),
            _ => {}
        }
    }

    fn object(
        &mut self,
        static_type: &'a str,
        sets: &[&'a SelectionSet],
        map: &mut IndexMap<Name, Value>,
    ) {
        let Some(meta) = self.registry.types.get(static_type) else {
            return;
        };
        let concrete = if meta.is_abstract() {
            match map.shift_remove(TYPENAME) {
                Some(Value::String(name)) => self
                    .registry
                    .types
                    .get_key_value(name.as_str())
                    .map(|(k, _)| k.as_str()),
                _ => None,
            }
        } else {
            Some(static_type)
        };
        // Without the concrete type (it cannot be missing), every fragment counts.
        let type_name = concrete.unwrap_or(static_type);
        let plan = self.plan(type_name, sets);
        self.apply(&plan, map);
    }

    /// Puts `map`'s keys in `plan`'s order, and its values in theirs.
    fn apply(&mut self, plan: &Plan<'a>, map: &mut IndexMap<Name, Value>) {
        // Most objects (all whose fields finished in order) are whole and in order already:
        // their keys are the plan's, position by position, and only their values are visited.
        let in_order = map.len() == plan.keys.len()
            && map
                .keys()
                .zip(&plan.keys)
                .all(|(have, (want, _))| have.as_str() == *want);
        if in_order {
            for (value, (_, child)) in map.values_mut().zip(&plan.keys) {
                if let Some(child) = child {
                    self.value(child.type_name, &child.sets, value);
                }
            }
            return;
        }
        let mut unordered = std::mem::take(map);
        map.reserve(unordered.len());
        for (key, child) in &plan.keys {
            let Some((name, mut value)) = unordered.swap_remove_entry(*key) else {
                continue;
            };
            if let Some(child) = child {
                self.value(child.type_name, &child.sets, &mut value);
            }
            map.insert(name, value);
        }
        // Nothing should be left; if something is, it keeps its place at the end.
        map.extend(unordered);
    }

    fn plan(&mut self, type_name: &'a str, sets: &[&'a SelectionSet]) -> Rc<Plan<'a>> {
        let cache_key = (
            type_name,
            sets.iter().map(|s| *s as *const SelectionSet).collect(),
        );
        if let Some(plan) = self.plans.get(&cache_key) {
            return Rc::clone(plan);
        }
        let mut fields: IndexMap<&'a str, (&'a Field, Vec<&'a SelectionSet>)> = IndexMap::new();
        let mut visited = HashSet::new();
        for set in sets {
            self.collect(type_name, set, &mut fields, &mut visited);
        }
        let meta = self.registry.types.get(type_name);
        let keys = fields
            .into_iter()
            .map(|(key, (field, sub))| {
                let child = meta
                    .and_then(|meta| field_type(self.registry, meta, &field.name.node))
                    .filter(|_| !sub.is_empty())
                    .map(|type_name| Child {
                        type_name,
                        sets: sub,
                    });
                (key, child)
            })
            .collect();
        let plan = Rc::new(Plan { keys });
        self.plans.insert(cache_key, Rc::clone(&plan));
        plan
    }

    fn collect(
        &self,
        type_name: &str,
        set: &'a SelectionSet,
        fields: &mut IndexMap<&'a str, (&'a Field, Vec<&'a SelectionSet>)>,
        visited: &mut HashSet<&'a str>,
    ) {
        for item in &set.items {
            if super::skipped(item.node.directives(), self.variables) {
                continue;
            }
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let key = field.response_key().node.as_str();
                    if key == TYPENAME {
                        continue;
                    }
                    let entry = fields.entry(key).or_insert((field, Vec::new()));
                    if !field.selection_set.node.items.is_empty() {
                        entry.1.push(&field.selection_set.node);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if !visited.insert(name) {
                        continue;
                    }
                    if let Some(fragment) = self.document.fragments.get(name)
                        && self.applies(&fragment.node.type_condition.node.on.node, type_name)
                    {
                        self.collect(
                            type_name,
                            &fragment.node.selection_set.node,
                            fields,
                            visited,
                        );
                    }
                }
                Selection::InlineFragment(fragment) => {
                    let applies = fragment
                        .node
                        .type_condition
                        .as_ref()
                        .is_none_or(|c| self.applies(&c.node.on.node, type_name));
                    if applies {
                        self.collect(
                            type_name,
                            &fragment.node.selection_set.node,
                            fields,
                            visited,
                        );
                    }
                }
            }
        }
    }

    /// DoesFragmentTypeApply: the type itself, or an interface or union that holds it.
    fn applies(&self, condition: &str, type_name: &str) -> bool {
        condition == type_name
            || self
                .registry
                .types
                .get(condition)
                .is_some_and(|c| c.is_possible_type(type_name))
            // An abstract type (its concrete type unknown) may be any of its members.
            || self
                .registry
                .types
                .get(type_name)
                .is_some_and(|t| t.is_abstract())
    }
}
