//! The load order: parents before children, or the cycle that forbids one.

use std::collections::{BTreeSet, HashMap};

use super::model::*;

/// Orders tables so that every parent comes before its children (self-references aside),
/// or names a cycle.
pub(super) fn load_order(tables: &[TablePlan]) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let parents: Vec<BTreeSet<usize>> = tables
        .iter()
        .map(|t| {
            t.foreign_keys
                .iter()
                .filter(|f| !f.self_reference)
                .filter_map(|f| index.get(f.parent.as_str()).copied())
                .collect()
        })
        .collect();
    let mut done = vec![false; tables.len()];
    let mut order = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        let ready = (0..tables.len()).find(|&i| !done[i] && parents[i].iter().all(|&p| done[p]));
        match ready {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                // Walk parent links from any waiting table until a table repeats: that is a cycle.
                let mut path = vec![
                    (0..tables.len())
                        .find(|&i| !done[i])
                        .expect("some table waits"),
                ];
                loop {
                    let last = *path.last().expect("non-empty");
                    let next = *parents[last]
                        .iter()
                        .find(|&&p| !done[p])
                        .expect("a waiting table has a waiting parent");
                    if let Some(pos) = path.iter().position(|&p| p == next) {
                        let mut cycle: Vec<String> = path[pos..]
                            .iter()
                            .map(|&i| tables[i].name.clone())
                            .collect();
                        cycle.push(tables[next].name.clone());
                        return Err(cycle);
                    }
                    path.push(next);
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, parents: &[&str]) -> TablePlan {
        TablePlan {
            name: name.into(),
            id_column: "id".into(),
            id_sequence: None,
            identity_always: false,
            columns: vec![],
            foreign_keys: parents
                .iter()
                .map(|p| ForeignKeyRewrite {
                    column: format!("{p}_id"),
                    parent: p.to_string(),
                    self_reference: *p == name,
                })
                .collect(),
            kept_references: vec![],
            defaulted: vec![],
            generated: vec![],
            tenants: 0,
            rows: 0,
            unit_tenants: vec![],
        }
    }

    #[test]
    fn parents_load_first_and_self_references_do_not_block() {
        let tables = vec![
            table("leads", &["users", "jobs"]),
            table("jobs", &["users"]),
            table("users", &["users"]),
        ];
        let order: Vec<&str> = load_order(&tables)
            .unwrap()
            .into_iter()
            .map(|i| tables[i].name.as_str())
            .collect();
        assert_eq!(order, ["users", "jobs", "leads"]);
    }

    #[test]
    fn a_cycle_is_named() {
        let tables = vec![
            table("a", &["b"]),
            table("b", &["c"]),
            table("c", &["a"]),
            table("d", &[]),
        ];
        let cycle = load_order(&tables).unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
    }
}
