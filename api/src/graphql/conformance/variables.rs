//! CoerceVariableValues (spec §6.1.2): every variable the operation declares must be
//! coercible to its type before anything executes, or the request fails as a whole with
//! `BAD_USER_INPUT` and `extensions.variable` naming the variable.
//!
//! Written here because async-graphql's input checks (`is_valid_input_value`) are private
//! to its validator, which only looks at variables where an argument uses them.

use async_graphql::parser::types::{BaseType, OperationDefinition, Type};
use async_graphql::registry::{MetaType, MetaTypeName, Registry};
use async_graphql::{ServerError, ServerResult, Value as ConstValue, Variables};

use crate::graphql::error::Code;

pub fn check(
    registry: &Registry,
    operation: &OperationDefinition,
    variables: &Variables,
) -> ServerResult<()> {
    for definition in &operation.variable_definitions {
        let definition = &definition.node;
        let name = definition.name.node.as_str();
        let ty = &definition.var_type.node;
        let problem = match variables.get(&definition.name.node) {
            None if !ty.nullable && definition.default_value.is_none() => {
                Some(format!("of required type {ty} was not provided"))
            }
            None => None,
            Some(value) => invalid(registry, ty, value, name)
                .map(|reason| format!("got an invalid value: {reason}")),
        };
        if let Some(problem) = problem {
            let mut error = ServerError::new(
                format!("Variable ${name} {problem}."),
                Some(definition.name.pos),
            );
            let extensions = error.extensions.get_or_insert_with(Default::default);
            extensions.set("code", Code::BadUserInput.as_str());
            extensions.set("variable", name);
            return Err(error);
        }
    }
    Ok(())
}

/// Why `value` cannot be coerced to `ty` (`path` names where, as in `$input.name[2]`).
fn invalid(registry: &Registry, ty: &Type, value: &ConstValue, path: &str) -> Option<String> {
    if matches!(value, ConstValue::Null) {
        return (!ty.nullable).then(|| format!("${path} is null but must not be"));
    }
    match &ty.base {
        BaseType::List(item) => match value {
            ConstValue::List(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| invalid(registry, item, v, &format!("{path}[{i}]"))),
            // A single value stands for a list of one (input coercion of lists).
            single => invalid(registry, item, single, path),
        },
        BaseType::Named(name) => invalid_named(registry, name, value, path),
    }
}

fn invalid_named(
    registry: &Registry,
    type_name: &str,
    value: &ConstValue,
    path: &str,
) -> Option<String> {
    let expected = || format!("${path} is not a valid {type_name}");
    // An unknown or output type is the validator's to report.
    match registry.types.get(type_name)? {
        MetaType::Scalar {
            is_valid: Some(is_valid),
            ..
        } => (!is_valid(value)).then(expected),
        MetaType::Scalar { is_valid: None, .. } => None,
        MetaType::Enum { enum_values, .. } => match value {
            ConstValue::Enum(name) if enum_values.contains_key(name.as_str()) => None,
            ConstValue::String(name) if enum_values.contains_key(name.as_str()) => None,
            _ => Some(format!(
                "${path} is not one of {}",
                enum_values.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        },
        MetaType::InputObject {
            input_fields,
            oneof,
            ..
        } => {
            let ConstValue::Object(fields) = value else {
                return Some(expected());
            };
            if let Some(unknown) = fields
                .keys()
                .find(|k| !input_fields.contains_key(k.as_str()))
            {
                return Some(format!("{type_name} has no field {unknown:?} (at ${path})"));
            }
            if *oneof && fields.values().filter(|v| **v != ConstValue::Null).count() != 1 {
                return Some(format!("${path} must set exactly one field of {type_name}"));
            }
            input_fields.values().find_map(|field| {
                let field_path = format!("{path}.{}", field.name);
                match fields.get(field.name.as_str()) {
                    None if MetaTypeName::create(&field.ty).is_non_null()
                        && field.default_value.is_none() =>
                    {
                        Some(format!("${field_path} is required"))
                    }
                    None => None,
                    Some(v) => invalid(registry, &Type::new(&field.ty)?, v, &field_path),
                }
            })
        }
        _ => None,
    }
}
