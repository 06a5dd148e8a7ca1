//! `x-kubernetes-validations`: CEL rules on a structural schema's nodes, as apiextensions-
//! apiserver evaluates them, with the `cel` crate (cel-rust, the maintained Rust CEL
//! interpreter). `self` is the node's value; `oldSelf`, on an update, its previous value, and a
//! rule that names `oldSelf` (a transition rule) is only checked when there is one.

use serde_json::Value;

use crate::validation::{BadValue, FieldError};

/// One rule of a schema node.
#[derive(Debug)]
pub struct Rule<'s> {
    pub rule: &'s str,
    message: Option<&'s str>,
    message_expression: Option<&'s str>,
    field_path: Option<&'s str>,
    reason: Option<&'s str>,
}

/// The rules of a schema node.
pub fn rules(schema: &Value) -> Vec<Rule<'_>> {
    schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(Rule {
                rule: r["rule"].as_str()?,
                message: r["message"].as_str().filter(|m| !m.is_empty()),
                message_expression: r["messageExpression"].as_str().filter(|m| !m.is_empty()),
                field_path: r["fieldPath"].as_str().filter(|p| !p.is_empty()),
                reason: r["reason"].as_str(),
            })
        })
        .collect()
}

/// Why a rule does not compile, for the CRD's validation.
pub fn compile_error(rule: &str) -> Option<String> {
    program(rule).err()
}

/// The most compiled programs kept; past it the cache starts over (the expressions of the
/// stored CRDs and policies are far fewer).
const MAX_PROGRAMS: usize = 4096;

/// `expression` compiled, once per distinct expression: every object a CRD validates, every
/// request a policy sees, runs the same few expressions.
fn program(expression: &str) -> Result<std::sync::Arc<cel::Program>, String> {
    use std::{
        collections::HashMap,
        sync::{Arc, LazyLock, Mutex},
    };
    static PROGRAMS: LazyLock<Mutex<HashMap<String, Arc<cel::Program>>>> =
        LazyLock::new(Mutex::default);
    if let Some(program) = PROGRAMS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(expression)
    {
        return Ok(Arc::clone(program));
    }
    let program = Arc::new(cel::Program::compile(expression).map_err(|e| e.to_string())?);
    let mut programs = PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    if programs.len() >= MAX_PROGRAMS {
        programs.clear();
    }
    programs.insert(expression.to_owned(), Arc::clone(&program));
    Ok(program)
}

/// The variables of an admission policy's expressions: JSON values bound by name (`object`,
/// `oldObject`, `request`, `params`, `namespaceObject`), and `variables.<name>`, each the value
/// of one of the policy's variable expressions, defined in order.
#[derive(Debug, Default)]
pub struct Activation {
    bound: Vec<(String, cel::Value)>,
    variables: std::collections::HashMap<String, cel::Value>,
}

impl Activation {
    pub fn new(bound: &[(&str, &Value)]) -> Result<Self, String> {
        let bound = bound
            .iter()
            .map(|(name, value)| {
                cel::to_value(value)
                    .map(|v| ((*name).to_owned(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            bound,
            variables: std::collections::HashMap::new(),
        })
    }

    /// Evaluates `expression` and binds it as `variables.<name>`. A variable that fails to
    /// evaluate stays unbound: only the expressions that use it fail.
    pub fn define(&mut self, name: &str, expression: &str) -> Result<(), String> {
        let value = self.evaluate(expression)?;
        self.variables.insert(name.to_owned(), value);
        Ok(())
    }

    /// A boolean expression's value.
    pub fn condition(&self, expression: &str) -> Result<bool, String> {
        match self.evaluate(expression)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!("expected a boolean, got {other:?}")),
        }
    }

    /// A string expression's value (a message expression's).
    pub fn string(&self, expression: &str) -> Result<String, String> {
        match self.evaluate(expression)? {
            cel::Value::String(s) => Ok(s.to_string()),
            other => Err(format!("expected a string, got {other:?}")),
        }
    }

    fn evaluate(&self, expression: &str) -> Result<cel::Value, String> {
        let program = program(expression)?;
        let mut context = cel::Context::default();
        for (name, value) in &self.bound {
            context.add_variable_from_value(name.clone(), value.clone());
        }
        context.add_variable_from_value("variables", self.variables.clone());
        program.execute(&context).map_err(|e| e.to_string())
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Evaluates `expression` with `self` (and `oldSelf`) bound.
fn evaluate(expression: &str, value: &Value, old: Option<&Value>) -> Result<cel::Value, String> {
    run(&*program(expression)?, value, old)
}

/// Runs a compiled program with `self` (and `oldSelf`) bound.
fn run(program: &cel::Program, value: &Value, old: Option<&Value>) -> Result<cel::Value, String> {
    let mut context = cel::Context::default();
    let to_cel = |v: &Value| cel::to_value(v).map_err(|e| e.to_string());
    context.add_variable_from_value("self", to_cel(value)?);
    if let Some(old) = old {
        context.add_variable_from_value("oldSelf", to_cel(old)?);
    }
    program.execute(&context).map_err(|e| e.to_string())
}

/// Checks `value` (at `path`) against the node's rules; `old` is its previous value on an
/// update.
pub fn check(schema: &Value, value: &Value, old: Option<&Value>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for rule in rules(schema) {
        // Whether it is a transition rule, then its verdict, from one compiled program.
        let verdict = match program(rule.rule) {
            Ok(program) if old.is_none() && program.references().has_variable("oldSelf") => {
                continue;
            }
            Ok(program) => run(&program, value, old),
            Err(e) => Err(e),
        };
        let message = match verdict {
            Ok(cel::Value::Bool(true)) => continue,
            Ok(cel::Value::Bool(false)) => match (rule.message_expression, rule.message) {
                (Some(expression), fallback) => match evaluate(expression, value, old) {
                    Ok(cel::Value::String(s)) if !s.is_empty() => s.to_string(),
                    _ => fallback
                        .map_or_else(|| format!("failed rule: {}", rule.rule), str::to_owned),
                },
                (None, Some(message)) => message.to_owned(),
                (None, None) => format!("failed rule: {}", rule.rule),
            },
            Ok(other) => format!("rule {:?} evaluated to {other:?}, not a boolean", rule.rule),
            Err(e) => format!("rule {:?} could not be evaluated: {e}", rule.rule),
        };
        let at = match rule.field_path {
            Some(field) => format!("{path}{field}"),
            None => path.to_owned(),
        };
        errs.push(match rule.reason {
            Some("FieldValueForbidden") => FieldError::forbidden(at, message),
            Some("FieldValueRequired") => FieldError::required(at).with_detail(message),
            Some("FieldValueDuplicate") => {
                FieldError::duplicate(at, BadValue::Str(type_name(value).into()))
                    .with_detail(message)
            }
            _ => FieldError::invalid(at, BadValue::Str(type_name(value).into()), message),
        });
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_pass_fail_with_their_message_and_transition_rules_need_an_old_value() {
        let schema = json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.min <= self.max", "message": "min must not exceed max"},
            {"rule": "self.max < 100"},
            {"rule": "self.max >= oldSelf.max", "message": "max may not shrink", "fieldPath": ".max"},
        ]});
        assert!(check(&schema, &json!({"min": 1, "max": 5}), None, "spec").is_empty());
        let errs: Vec<String> = check(&schema, &json!({"min": 300, "max": 200}), None, "spec")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            [
                r#"spec: Invalid value: "object": min must not exceed max"#,
                r#"spec: Invalid value: "object": failed rule: self.max < 100"#,
            ]
        );
        let shrunk = check(
            &schema,
            &json!({"min": 1, "max": 4}),
            Some(&json!({"min": 1, "max": 5})),
            "spec",
        );
        assert_eq!(shrunk.len(), 1);
        assert_eq!(
            shrunk[0].to_string(),
            r#"spec.max: Invalid value: "object": max may not shrink"#
        );
    }

    #[test]
    fn bad_rules_do_not_compile() {
        assert!(compile_error("self.a ==").is_some());
        assert!(compile_error("self.a == 1").is_none());
    }
}
