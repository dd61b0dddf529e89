//! `keystone schema diff OLD [NEW]`: every change between two SDLs, classified by what it
//! does to clients built against OLD.
//!
//! - **breaking**: a valid operation against OLD fails or changes meaning against NEW (a type,
//!   field, argument, input field, enum value or union member removed; a type changed; an
//!   output made nullable; an input made required; a new required argument or input field);
//! - **dangerous**: valid operations still validate, but a client may meet something it was
//!   not written for (a new enum value or union member, a changed default), or will break
//!   in a later release (a field, argument or input field newly deprecated);
//! - **safe**: additions clients never see unless they ask (new types, fields, optional
//!   arguments and input fields), an output made non-null, an input made optional.
//!
//! The SDL is parsed with async-graphql's parser; the rules are ours, after the ones
//! GraphQL Inspector and graphql-js's `findBreakingChanges` apply.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;

use async_graphql::parser::types::{
    BaseType, FieldDefinition, InputValueDefinition, Type, TypeKind, TypeSystemDefinition,
};
use async_graphql::parser::{Positioned, parse_schema};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Breaking,
    Dangerous,
    Safe,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Severity::Breaking => "BREAKING",
            Severity::Dangerous => "DANGEROUS",
            Severity::Safe => "safe",
        })
    }
}

/// One change: where (`Type`, `Type.field`, `Type.field(arg)`) and what.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub severity: Severity,
    pub path: String,
    pub what: String,
}

impl Change {
    /// `path: what`, the form an acknowledgement file lists.
    pub fn key(&self) -> String {
        format!("{}: {}", self.path, self.what)
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<9} {}", self.severity, self.key())
    }
}

/// A type as the rules see it.
enum Shape<'a> {
    Scalar,
    Object(Fields<'a>, Vec<String>),
    Interface(Fields<'a>, Vec<String>),
    Union(Vec<String>),
    Enum(Vec<String>),
    Input(Inputs<'a>),
}

type Fields<'a> = BTreeMap<&'a str, &'a FieldDefinition>;
type Inputs<'a> = BTreeMap<&'a str, &'a InputValueDefinition>;

impl Shape<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Shape::Scalar => "scalar",
            Shape::Object(..) => "object",
            Shape::Interface(..) => "interface",
            Shape::Union(_) => "union",
            Shape::Enum(_) => "enum",
            Shape::Input(_) => "input object",
        }
    }
}

fn names(items: &[Positioned<async_graphql::Name>]) -> Vec<String> {
    items.iter().map(|n| n.node.to_string()).collect()
}

fn fields(fields: &[Positioned<FieldDefinition>]) -> Fields<'_> {
    fields
        .iter()
        .map(|f| (f.node.name.node.as_str(), &f.node))
        .collect()
}

fn inputs(values: &[Positioned<InputValueDefinition>]) -> Inputs<'_> {
    values
        .iter()
        .map(|v| (v.node.name.node.as_str(), &v.node))
        .collect()
}

fn shapes(document: &async_graphql::parser::types::ServiceDocument) -> BTreeMap<&str, Shape<'_>> {
    let mut out = BTreeMap::new();
    for definition in &document.definitions {
        let TypeSystemDefinition::Type(ty) = definition else {
            continue;
        };
        let ty = &ty.node;
        let shape = match &ty.kind {
            TypeKind::Scalar => Shape::Scalar,
            TypeKind::Object(o) => Shape::Object(fields(&o.fields), names(&o.implements)),
            TypeKind::Interface(i) => Shape::Interface(fields(&i.fields), names(&i.implements)),
            TypeKind::Union(u) => Shape::Union(names(&u.members)),
            TypeKind::Enum(e) => Shape::Enum(
                e.values
                    .iter()
                    .map(|v| v.node.value.node.to_string())
                    .collect(),
            ),
            TypeKind::InputObject(i) => Shape::Input(inputs(&i.fields)),
        };
        out.insert(ty.name.node.as_str(), shape);
    }
    out
}

/// How a type reference changed, for an output (a field's type) or an input.
fn type_change(old: &Type, new: &Type, input: bool) -> Option<(Severity, String)> {
    if old == new {
        return None;
    }
    let what = format!("type changed from {old} to {new}");
    // Same shape but for nullability at this level or below?
    fn compatible(old: &Type, new: &Type, input: bool) -> bool {
        // Outputs may gain non-null; inputs may lose it.
        let nullability_ok = if input {
            !old.nullable || new.nullable
        } else {
            old.nullable || !new.nullable
        };
        nullability_ok
            && match (&old.base, &new.base) {
                (BaseType::Named(a), BaseType::Named(b)) => a == b,
                (BaseType::List(a), BaseType::List(b)) => compatible(a, b, input),
                _ => false,
            }
    }
    let severity = if compatible(old, new, input) {
        Severity::Safe
    } else {
        Severity::Breaking
    };
    Some((severity, what))
}

/// The reason of a `@deprecated` among `directives`, if there is one.
fn deprecation(
    directives: &[Positioned<async_graphql::parser::types::ConstDirective>],
) -> Option<String> {
    let directive = directives
        .iter()
        .find(|d| d.node.name.node == "deprecated")?;
    Some(
        directive
            .node
            .get_argument("reason")
            .map_or_else(|| "No longer supported".to_owned(), |r| r.node.to_string()),
    )
}

/// A change for `path` when it is deprecated in `after` and was not in `before`.
fn newly_deprecated(
    path: &str,
    before: &[Positioned<async_graphql::parser::types::ConstDirective>],
    after: &[Positioned<async_graphql::parser::types::ConstDirective>],
) -> Option<Change> {
    match (deprecation(before), deprecation(after)) {
        (None, Some(reason)) => Some(Change {
            severity: Severity::Dangerous,
            path: path.to_owned(),
            what: format!("deprecated: {reason}"),
        }),
        _ => None,
    }
}

fn required(value: &InputValueDefinition) -> bool {
    !value.ty.node.nullable && value.default_value.is_none()
}

/// Arguments of a field, or fields of an input object: same rules.
fn compare_inputs(path: &str, old: &Inputs<'_>, new: &Inputs<'_>, out: &mut Vec<Change>) {
    let mut push = |severity, path: String, what: String| {
        out.push(Change {
            severity,
            path,
            what,
        })
    };
    for (name, before) in old {
        let at = format!("{path}.{name}");
        match new.get(name) {
            None => push(Severity::Breaking, at, "removed".to_owned()),
            Some(after) => {
                if let Some((severity, what)) = type_change(&before.ty.node, &after.ty.node, true) {
                    push(severity, at.clone(), what);
                }
                if let Some(change) = newly_deprecated(&at, &before.directives, &after.directives) {
                    push(change.severity, change.path, change.what);
                }
                let default =
                    |v: &InputValueDefinition| v.default_value.as_ref().map(|d| d.node.to_string());
                if default(before) != default(after) {
                    push(
                        Severity::Dangerous,
                        at,
                        format!(
                            "default changed from {} to {}",
                            default(before).unwrap_or_else(|| "none".into()),
                            default(after).unwrap_or_else(|| "none".into())
                        ),
                    );
                }
            }
        }
    }
    for (name, after) in new {
        if !old.contains_key(name) {
            let (severity, what) = if required(after) {
                (Severity::Breaking, "added, required")
            } else {
                (Severity::Safe, "added")
            };
            push(severity, format!("{path}.{name}"), what.to_owned());
        }
    }
}

fn compare_fields(ty: &str, old: &Fields<'_>, new: &Fields<'_>, out: &mut Vec<Change>) {
    for (name, before) in old {
        let path = format!("{ty}.{name}");
        let Some(after) = new.get(name) else {
            out.push(Change {
                severity: Severity::Breaking,
                path,
                what: "removed".to_owned(),
            });
            continue;
        };
        if let Some((severity, what)) = type_change(&before.ty.node, &after.ty.node, false) {
            out.push(Change {
                severity,
                path: path.clone(),
                what,
            });
        }
        out.extend(newly_deprecated(
            &path,
            &before.directives,
            &after.directives,
        ));
        // Arguments are listed as `Type.field(arg)`.
        let mut arguments = Vec::new();
        compare_inputs(
            &path,
            &inputs(&before.arguments),
            &inputs(&after.arguments),
            &mut arguments,
        );
        out.extend(arguments.into_iter().map(|mut c| {
            if let Some((field, arg)) = c.path.rsplit_once('.') {
                c.path = format!("{field}({arg})");
            }
            c
        }));
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        out.push(Change {
            severity: Severity::Safe,
            path: format!("{ty}.{name}"),
            what: "added".to_owned(),
        });
    }
}

/// Members (union members, enum values, implemented interfaces) removed and added.
fn compare_members(
    path: &str,
    noun: &str,
    old: &[String],
    new: &[String],
    added: Severity,
    out: &mut Vec<Change>,
) {
    for gone in old.iter().filter(|m| !new.contains(m)) {
        out.push(Change {
            severity: Severity::Breaking,
            path: path.to_owned(),
            what: format!("{noun} {gone} removed"),
        });
    }
    for new_one in new.iter().filter(|m| !old.contains(m)) {
        out.push(Change {
            severity: added,
            path: path.to_owned(),
            what: format!("{noun} {new_one} added"),
        });
    }
}

/// Every change from `old` to `new`, breaking first; `Err` when either does not parse.
pub fn diff(old: &str, new: &str) -> Result<Vec<Change>, String> {
    let old = parse_schema(old).map_err(|e| format!("the old schema does not parse: {e}"))?;
    let new = parse_schema(new).map_err(|e| format!("the new schema does not parse: {e}"))?;
    let (old, new) = (shapes(&old), shapes(&new));
    let mut out = Vec::new();
    for (name, before) in &old {
        let Some(after) = new.get(name) else {
            out.push(Change {
                severity: Severity::Breaking,
                path: (*name).to_owned(),
                what: "removed".to_owned(),
            });
            continue;
        };
        match (before, after) {
            (Shape::Scalar, Shape::Scalar) => {}
            (Shape::Object(f1, i1), Shape::Object(f2, i2))
            | (Shape::Interface(f1, i1), Shape::Interface(f2, i2)) => {
                compare_fields(name, f1, f2, &mut out);
                compare_members(name, "interface", i1, i2, Severity::Safe, &mut out);
            }
            (Shape::Union(m1), Shape::Union(m2)) => {
                compare_members(name, "member", m1, m2, Severity::Dangerous, &mut out);
            }
            (Shape::Enum(v1), Shape::Enum(v2)) => {
                compare_members(name, "value", v1, v2, Severity::Dangerous, &mut out);
            }
            (Shape::Input(f1), Shape::Input(f2)) => compare_inputs(name, f1, f2, &mut out),
            _ => out.push(Change {
                severity: Severity::Breaking,
                path: (*name).to_owned(),
                what: format!("kind changed from {} to {}", before.kind(), after.kind()),
            }),
        }
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        out.push(Change {
            severity: Severity::Safe,
            path: (*name).to_owned(),
            what: "added".to_owned(),
        });
    }
    out.sort();
    Ok(out)
}

/// The breaking changes not listed (as `path: what`, one per line; `#` starts a comment)
/// in `acknowledged`.
pub fn unacknowledged<'a>(changes: &'a [Change], acknowledged: &str) -> Vec<&'a Change> {
    let listed: Vec<&str> = acknowledged
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .collect();
    changes
        .iter()
        .filter(|c| c.severity == Severity::Breaking && !listed.contains(&c.key().as_str()))
        .collect()
}

/// `keystone schema diff`: one line per change, then the verdict.
pub fn run(
    old: &std::path::Path,
    new: Option<&std::path::Path>,
    allow: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let old_sdl = read(old)?;
    let new_sdl = match new {
        Some(path) => read(path)?,
        None => crate::graphql::sdl(),
    };
    let acknowledged = allow.map(read).transpose()?.unwrap_or_default();
    let changes = diff(&old_sdl, &new_sdl).map_err(anyhow::Error::msg)?;
    for change in &changes {
        println!("{change}");
    }
    let open = unacknowledged(&changes, &acknowledged);
    if open.is_empty() {
        println!("{} change(s), none breaking unacknowledged.", changes.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} breaking change(s) not acknowledged{}:",
            open.len(),
            allow.map_or(String::new(), |p| format!(" in {}", p.display()))
        );
        for change in open {
            eprintln!("  {}", change.key());
        }
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single change between two small schemas.
    fn only(old: &str, new: &str) -> (Severity, String) {
        let changes = diff(old, new).expect("both parse");
        assert_eq!(changes.len(), 1, "{changes:#?}");
        (changes[0].severity, changes[0].key())
    }

    const Q: &str = "type Query { a: Int }\n";

    #[test]
    fn types() {
        assert_eq!(
            only(&format!("{Q} type T {{ x: Int }}"), Q),
            (Severity::Breaking, "T: removed".into())
        );
        assert_eq!(
            only(Q, &format!("{Q} type T {{ x: Int }}")),
            (Severity::Safe, "T: added".into())
        );
        assert_eq!(
            only(
                &format!("{Q} type T {{ x: Int }}"),
                &format!("{Q} input T {{ x: Int }}")
            ),
            (
                Severity::Breaking,
                "T: kind changed from object to input object".into()
            )
        );
    }

    #[test]
    fn output_fields() {
        let t = |fields: &str| format!("type Query {{ {fields} }}");
        assert_eq!(
            only(&t("a: Int b: Int"), &t("a: Int")),
            (Severity::Breaking, "Query.b: removed".into())
        );
        assert_eq!(
            only(&t("a: Int"), &t("a: Int b: Int")),
            (Severity::Safe, "Query.b: added".into())
        );
        assert_eq!(
            only(&t("a: Int"), &t("a: String")).0,
            Severity::Breaking,
            "another type"
        );
        assert_eq!(
            only(&t("a: Int"), &t("a: Int!")).0,
            Severity::Safe,
            "an output made non-null"
        );
        assert_eq!(
            only(&t("a: Int!"), &t("a: Int")).0,
            Severity::Breaking,
            "an output made nullable"
        );
        assert_eq!(only(&t("a: [Int]"), &t("a: [Int!]!")).0, Severity::Safe);
        assert_eq!(only(&t("a: [Int!]"), &t("a: [Int]")).0, Severity::Breaking);
        assert_eq!(only(&t("a: [Int]"), &t("a: Int")).0, Severity::Breaking);
    }

    #[test]
    fn arguments() {
        let t = |args: &str| format!("type Query {{ a{args}: Int }}");
        assert_eq!(
            only(&t("(x: Int)"), &t("")),
            (Severity::Breaking, "Query.a(x): removed".into())
        );
        assert_eq!(
            only(&t(""), &t("(x: Int!)")),
            (Severity::Breaking, "Query.a(x): added, required".into())
        );
        assert_eq!(
            only(&t(""), &t("(x: Int)")),
            (Severity::Safe, "Query.a(x): added".into())
        );
        assert_eq!(
            only(&t(""), &t("(x: Int! = 3)")).0,
            Severity::Safe,
            "a non-null argument with a default is optional"
        );
        assert_eq!(
            only(&t("(x: Int)"), &t("(x: Int!)")).0,
            Severity::Breaking,
            "an input made required"
        );
        assert_eq!(
            only(&t("(x: Int!)"), &t("(x: Int)")).0,
            Severity::Safe,
            "an input made optional"
        );
        assert_eq!(
            only(&t("(x: Int = 1)"), &t("(x: Int = 2)")),
            (
                Severity::Dangerous,
                "Query.a(x): default changed from 1 to 2".into()
            )
        );
    }

    #[test]
    fn input_fields() {
        let t = |fields: &str| format!("{Q} input I {{ {fields} }}");
        assert_eq!(
            only(&t("x: Int y: Int"), &t("x: Int")),
            (Severity::Breaking, "I.y: removed".into())
        );
        assert_eq!(
            only(&t("x: Int"), &t("x: Int y: Int!")),
            (Severity::Breaking, "I.y: added, required".into())
        );
        assert_eq!(
            only(&t("x: Int"), &t("x: Int y: String")),
            (Severity::Safe, "I.y: added".into())
        );
        assert_eq!(only(&t("x: Int"), &t("x: ID")).0, Severity::Breaking);
        assert_eq!(
            only(&t("x: Int"), &t(r#"x: Int @deprecated(reason: "use y")"#)),
            (Severity::Dangerous, r#"I.x: deprecated: "use y""#.into())
        );
        let q = |field: &str| format!("type Query {{ {field} }}");
        assert_eq!(
            only(&q("a: Int"), &q("a: Int @deprecated")),
            (
                Severity::Dangerous,
                "Query.a: deprecated: No longer supported".into()
            )
        );
    }

    #[test]
    fn enums_unions_and_interfaces() {
        let e = |values: &str| format!("{Q} enum E {{ {values} }}");
        assert_eq!(
            only(&e("A B"), &e("A")),
            (Severity::Breaking, "E: value B removed".into())
        );
        assert_eq!(
            only(&e("A"), &e("A B")),
            (Severity::Dangerous, "E: value B added".into())
        );
        let u = |members: &str| {
            format!("{Q} type A {{ x: Int }} type B {{ x: Int }} union U = {members}")
        };
        assert_eq!(
            only(&u("A | B"), &u("A")),
            (Severity::Breaking, "U: member B removed".into())
        );
        assert_eq!(
            only(&u("A"), &u("A | B")),
            (Severity::Dangerous, "U: member B added".into())
        );
        let i = |implements: &str| {
            format!("{Q} interface N {{ id: ID }} type T {implements} {{ id: ID }}")
        };
        assert_eq!(
            only(&i("implements N"), &i("")),
            (Severity::Breaking, "T: interface N removed".into())
        );
        assert_eq!(
            only(&i(""), &i("implements N")),
            (Severity::Safe, "T: interface N added".into())
        );
    }

    #[test]
    fn descriptions_and_order_change_nothing() {
        let old = "type Query { a: Int b(x: Int): String }";
        let new = "\"\"\"Reads.\"\"\" type Query { \"\"\"B.\"\"\" b(\"\"\"X.\"\"\" x: Int): String a: Int }";
        assert_eq!(diff(old, new).unwrap(), Vec::new());
    }

    #[test]
    fn acknowledged_breaks_pass_the_gate() {
        let changes = diff(
            "type Query { a: Int b: Int c: Int }",
            "type Query { a: String d: Int }",
        )
        .unwrap();
        let open: Vec<String> = unacknowledged(
            &changes,
            "# intended for 2.0\nQuery.b: removed\nQuery.a: type changed from Int to String\n",
        )
        .iter()
        .map(|c| c.key())
        .collect();
        assert_eq!(open, ["Query.c: removed"]);
    }

    /// The schema this binary serves compared with itself: nothing changed.
    #[test]
    fn the_current_schema_has_no_changes_against_itself() {
        let sdl = crate::graphql::sdl();
        assert_eq!(diff(&sdl, &sdl).unwrap(), Vec::new());
    }
}
