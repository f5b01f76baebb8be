use super::*;

fn names(pairs: &[(i64, &str)]) -> BTreeMap<i64, String> {
    pairs.iter().map(|(o, n)| (*o, (*n).to_owned())).collect()
}

#[test]
fn referencing_tables_go_first() {
    // users <- courses <- graduates, users <- graduates, courses -> courses (self: ignored upstream)
    let tables = names(&[(1, "users"), (2, "courses"), (3, "graduates")]);
    let edges: BTreeMap<i64, Vec<(i64, Option<String>)>> = [
        (2, vec![(1, Some("c_u".into()))]),
        (3, vec![(1, Some("g_u".into())), (2, Some("g_c".into()))]),
    ]
    .into_iter()
    .collect();
    let (order, cycles) = drop_order(&tables, &edges);
    assert_eq!(order, ["graduates", "courses", "users"]);
    assert!(cycles.is_empty());
}

#[test]
fn a_cycle_is_broken_by_its_own_constraints() {
    let tables = names(&[(1, "a"), (2, "b"), (3, "c")]);
    let edges: BTreeMap<i64, Vec<(i64, Option<String>)>> = [
        (1, vec![(2, Some("a_b".into()))]),
        (2, vec![(1, Some("b_a".into()))]),
        (3, vec![(1, Some("c_a".into()))]),
    ]
    .into_iter()
    .collect();
    let (order, cycles) = drop_order(&tables, &edges);
    assert_eq!(order, ["c", "a", "b"]);
    assert_eq!(
        cycles,
        [
            ("a".to_owned(), "a_b".to_owned()),
            ("b".to_owned(), "b_a".to_owned())
        ]
    );
    let drop = SchemaDrop {
        tenant: 1,
        schema: "tenant_1".into(),
        cycle_constraints: cycles,
        tables: order,
    };
    assert_eq!(
        drop.statements(),
        [
            "ALTER TABLE \"tenant_1\".\"a\" DROP CONSTRAINT \"a_b\" RESTRICT",
            "ALTER TABLE \"tenant_1\".\"b\" DROP CONSTRAINT \"b_a\" RESTRICT",
            "DROP TABLE \"tenant_1\".\"c\" RESTRICT",
            "DROP TABLE \"tenant_1\".\"a\" RESTRICT",
            "DROP TABLE \"tenant_1\".\"b\" RESTRICT",
            "DROP SCHEMA \"tenant_1\" RESTRICT",
        ]
    );
}

#[test]
fn refusals_name_what_stands_in_the_way() {
    let e = DropError::Unverified {
        tenants: vec![3, 5],
    };
    let text = e.to_string();
    assert!(
        text.contains("tenant 3 has not been verified in this run"),
        "{text}"
    );
    assert!(
        text.contains("tenant 5 has not been verified in this run"),
        "{text}"
    );
    let e = DropError::Dependents {
        dependents: vec![(
            "tenant_2".into(),
            "view public.tenant_users".into(),
            "table tenant_2.users".into(),
        )],
    };
    assert!(
        e.to_string().starts_with(
            "view public.tenant_users depends on table tenant_2.users of schema tenant_2"
        ),
        "{e}"
    );
}
