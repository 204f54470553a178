//! `meshca acl …`: the ACL endpoints from the command line, printed as
//! Consul prints them (or as JSON with `--format json`).

use crate::cli::{AclCommand, AclFormat, AclPolicyCommand, AclTokenCommand, HttpArgs};
use crate::client::{print_json, request, send};
use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

pub fn run(http: &HttpArgs, cmd: AclCommand) -> anyhow::Result<()> {
    match cmd {
        AclCommand::Bootstrap(f) => {
            show_token(&f, &call(http, Method::PUT, "/v1/acl/bootstrap", None)?)
        }
        AclCommand::Token { command } => token(http, command),
        AclCommand::Policy { command } => policy(http, command),
    }
}

fn call(http: &HttpArgs, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let mut req = request(http, method, path)?;
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    Ok(send(req)?.json()?)
}

fn token(http: &HttpArgs, cmd: AclTokenCommand) -> anyhow::Result<()> {
    match cmd {
        AclTokenCommand::Create {
            description,
            policy_name,
            policy_id,
            service_identity,
            format,
        } => {
            let policies: Vec<Value> = policy_name
                .iter()
                .map(|n| json!({"Name": n}))
                .chain(policy_id.iter().map(|id| json!({"ID": id})))
                .collect();
            let identities: Vec<Value> = service_identity
                .iter()
                .map(|s| json!({"ServiceName": s}))
                .collect();
            let body = json!({"Description": description, "Policies": policies,
                              "ServiceIdentities": identities});
            show_token(
                &format,
                &call(http, Method::PUT, "/v1/acl/token", Some(body))?,
            )
        }
        AclTokenCommand::List(format) => {
            let all = call(http, Method::GET, "/v1/acl/tokens", None)?;
            show_list(&format, &all, token_text)
        }
        AclTokenCommand::Read { id, format } => show_token(
            &format,
            &call(http, Method::GET, &format!("/v1/acl/token/{id}"), None)?,
        ),
        AclTokenCommand::Delete { id } => {
            call(http, Method::DELETE, &format!("/v1/acl/token/{id}"), None)?;
            println!("Token \"{id}\" deleted successfully");
            Ok(())
        }
    }
}

fn policy(http: &HttpArgs, cmd: AclPolicyCommand) -> anyhow::Result<()> {
    match cmd {
        AclPolicyCommand::Create {
            name,
            description,
            rules,
            format,
        } => {
            let rules = match rules.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading rules from {path}"))?,
                None => rules,
            };
            let body = json!({"Name": name, "Description": description, "Rules": rules});
            let p = call(http, Method::PUT, "/v1/acl/policy", Some(body))?;
            show(&format, &p, policy_text)
        }
        AclPolicyCommand::List(format) => {
            let all = call(http, Method::GET, "/v1/acl/policies", None)?;
            show_list(&format, &all, policy_text)
        }
        AclPolicyCommand::Delete { id } => {
            call(http, Method::DELETE, &format!("/v1/acl/policy/{id}"), None)?;
            println!("Policy \"{id}\" deleted successfully");
            Ok(())
        }
    }
}

fn show_token(format: &AclFormat, t: &Value) -> anyhow::Result<()> {
    show(format, t, token_text)
}

fn show(format: &AclFormat, v: &Value, text: fn(&Value) -> String) -> anyhow::Result<()> {
    if format.format == "json" {
        return print_json(v);
    }
    print!("{}", text(v));
    Ok(())
}

fn show_list(format: &AclFormat, all: &Value, text: fn(&Value) -> String) -> anyhow::Result<()> {
    if format.format == "json" {
        return print_json(all);
    }
    let items = all.as_array().map(Vec::as_slice).unwrap_or_default();
    let blocks: Vec<String> = items.iter().map(text).collect();
    print!("{}", blocks.join("\n"));
    Ok(())
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Consul's layout of a token.
fn token_text(t: &Value) -> String {
    let mut out = format!(
        "AccessorID:       {}\nSecretID:         {}\nDescription:      {}\nLocal:            {}\nCreate Time:      {}\n",
        s(t, "AccessorID"),
        s(t, "SecretID"),
        s(t, "Description"),
        t["Local"].as_bool().unwrap_or(false),
        s(t, "CreateTime"),
    );
    if let Some(ps) = t["Policies"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("Policies:\n");
        for p in ps {
            out.push_str(&format!("   {} - {}\n", s(p, "ID"), s(p, "Name")));
        }
    }
    if let Some(ids) = t["ServiceIdentities"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("Service Identities:\n");
        for i in ids {
            out.push_str(&format!("   {} (Datacenters: all)\n", s(i, "ServiceName")));
        }
    }
    out
}

/// Consul's layout of a policy.
fn policy_text(p: &Value) -> String {
    format!(
        "ID:           {}\nName:         {}\nDescription:  {}\nRules:\n{}\n",
        s(p, "ID"),
        s(p, "Name"),
        s(p, "Description"),
        s(p, "Rules"),
    )
}
