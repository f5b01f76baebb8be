//! One batch of tenants compared: both sides read in key order in the shared snapshot, each
//! table's rows compared by key and hash, the changes and fingerprints handed to the writer.

use super::*;

/// A tenant's units, in load order, each with its row lines.
pub(super) struct TenantDelta {
    pub(super) units: Vec<(UnitHeader, Vec<Line>)>,
}

/// Where one batch's time went.
#[derive(Default)]
pub(super) struct BatchTimes {
    pub(super) source_ms: u64,
    pub(super) baseline_ms: u64,
    pub(super) compare_ms: u64,
}

/// Consecutive tenants compared together: one query per table on each side.
pub(super) struct Batch<'a> {
    pub(super) tenants: &'a [TenantSchema],
    pub(super) plan_tables: &'a [TablePlan],
    pub(super) shapes: &'a [TableShape],
    pub(super) shared: &'a str,
    pub(super) tenant_column: &'a str,
}

/// A row of the tenant schemas as the source query returns it.
pub(super) struct SourceRow {
    pub(super) tenant: i64,
    pub(super) key: i64,
    pub(super) md5: String,
    pub(super) row: String,
}

impl Batch<'_> {
    pub(super) async fn export(
        self,
        source: &PgPool,
        baseline: &PgPool,
        snapshot: &str,
    ) -> Result<(Vec<TenantDelta>, BatchTimes), DeltaError> {
        let first = self.tenants.first().map(|t| t.id).unwrap_or_default();
        let what = |side: &str| format!("reading tenants from {first} on ({side})");
        let mut src = source
            .begin()
            .await
            .map_err(DeltaError::db(what("tenant schemas")))?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET TRANSACTION SNAPSHOT {}; {RENDER_SETTINGS}",
            sql::literal(snapshot)
        )))
        .execute(&mut *src)
        .await
        .map_err(DeltaError::db(what("tenant schemas")))?;
        let mut base = baseline
            .begin()
            .await
            .map_err(DeltaError::db(what("baseline")))?;
        sqlx::raw_sql(RENDER_SETTINGS)
            .execute(&mut *base)
            .await
            .map_err(DeltaError::db(what("baseline")))?;
        let mut times = BatchTimes::default();
        let mut out: Vec<TenantDelta> = self
            .tenants
            .iter()
            .map(|_| TenantDelta { units: Vec::new() })
            .collect();
        for (index, (tp, shape)) in self.plan_tables.iter().zip(self.shapes).enumerate() {
            let members: Vec<(usize, &TenantSchema)> = self
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| tp.unit_tenants.binary_search(&t.id).is_ok())
                .collect();
            if members.is_empty() {
                continue;
            }
            let started = Instant::now();
            let here = self.read_source(&mut src, shape, &members).await?;
            times.source_ms += started.elapsed().as_millis() as u64;
            let started = Instant::now();
            let ids: Vec<i64> = members.iter().map(|(_, t)| t.id).collect();
            let there: Vec<(i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT d.{tc}::int8, d.{id}::int8, md5(({row})::text) FROM {table} d \
                 WHERE d.{tc} = ANY($1) ORDER BY 1, 2",
                tc = sql::ident(self.tenant_column),
                id = sql::ident(&shape.id_column),
                row = row_expr(shape, "d"),
                table = sql::table(self.shared, &shape.name),
            )))
            .bind(&ids)
            .fetch_all(&mut *base)
            .await
            .map_err(DeltaError::db(format!(
                "{}, table {}",
                what("baseline"),
                shape.name
            )))?;
            times.baseline_ms += started.elapsed().as_millis() as u64;
            let started = Instant::now();
            let (mut i, mut j) = (0, 0);
            for (slot, tenant) in members {
                let from = i;
                while i < here.len() && here[i].tenant == tenant.id {
                    i += 1;
                }
                let from_there = j;
                while j < there.len() && there[j].0 == tenant.id {
                    j += 1;
                }
                let unit = compare(tenant.id, index, &here[from..i], &there[from_there..j]);
                out[slot].units.push(unit);
            }
            if i != here.len() || j != there.len() {
                return Err(DeltaError::Database {
                    action: format!("{}, table {}", what("both sides"), shape.name),
                    reason: "rows of tenants outside the batch, or out of order".into(),
                    transient: false,
                });
            }
            times.compare_ms += started.elapsed().as_millis() as u64;
        }
        // Both reads only: nothing to keep.
        src.rollback()
            .await
            .map_err(DeltaError::db(what("tenant schemas")))?;
        base.rollback()
            .await
            .map_err(DeltaError::db(what("baseline")))?;
        Ok((out, times))
    }

    /// Every row of `shape` in the members' schemas, in (tenant, key) order, with its hash
    /// and its columns in `COPY` text: one `COPY` of a `UNION ALL` over the schemas.
    async fn read_source(
        &self,
        src: &mut PgConnection,
        shape: &TableShape,
        members: &[(usize, &TenantSchema)],
    ) -> Result<Vec<SourceRow>, DeltaError> {
        let id = sql::ident(&shape.id_column);
        let cols: Vec<String> = shape
            .columns
            .iter()
            .map(|c| format!("s.{}::{}", sql::ident(&c.name), c.type_name))
            .collect();
        let selects: Vec<String> = members
            .iter()
            .map(|(_, t)| {
                format!(
                    "SELECT {tenant}::int8, s.{id}::int8, md5(({row})::text), {cols} FROM {table} s",
                    tenant = t.id,
                    row = row_expr(shape, "s"),
                    cols = cols.join(", "),
                    table = sql::table(&t.schema, &shape.name),
                )
            })
            .collect();
        let statement = format!(
            "COPY ({} ORDER BY 1, 2) TO STDOUT",
            selects.join(" UNION ALL ")
        );
        let what = || {
            format!(
                "reading table {} of tenants {} to {} (tenant schemas)",
                shape.name,
                members.first().map(|(_, t)| t.id).unwrap_or_default(),
                members.last().map(|(_, t)| t.id).unwrap_or_default()
            )
        };
        let mut text = Vec::new();
        let mut stream = src
            .copy_out_raw(&statement)
            .await
            .map_err(DeltaError::db(what()))?;
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.map_err(DeltaError::db(what()))?);
        }
        drop(stream);
        let text = String::from_utf8(text).map_err(|err| DeltaError::Database {
            action: what(),
            reason: format!("COPY sent text that is not UTF-8: {err}"),
            transient: false,
        })?;
        let mut rows = Vec::new();
        for line in text.lines() {
            let mut fields = line.splitn(4, '\t');
            let parsed = (|| {
                let tenant = fields.next()?.parse().ok()?;
                let key = fields.next()?.parse().ok()?;
                let md5 = fields.next()?.to_owned();
                let row = fields.next()?.to_owned();
                Some(SourceRow {
                    tenant,
                    key,
                    md5,
                    row,
                })
            })();
            rows.push(parsed.ok_or_else(|| DeltaError::Database {
                action: what(),
                reason: format!("COPY sent a line this export did not ask for: {line:?}"),
                transient: false,
            })?);
        }
        Ok(rows)
    }
}

/// One (tenant, table): the schema's rows against the baseline's, both in key order, in one
/// merge pass; the changed rows become the unit's lines, and the schema's rows its count and
/// fingerprint.
pub(super) fn compare(
    tenant: i64,
    table: usize,
    here: &[SourceRow],
    there: &[(i64, i64, String)],
) -> (UnitHeader, Vec<Line>) {
    let mut lines = Vec::new();
    let mut deleted = Vec::new();
    let (mut inserted, mut updated) = (0u64, 0u64);
    let mut fingerprint = Fingerprint::default();
    let (mut i, mut j) = (0, 0);
    let changed = |op, row: &SourceRow| Line::Row {
        op,
        key: row.key,
        row: Some(RowText(row.row.clone())),
    };
    while i < here.len() || j < there.len() {
        match (here.get(i), there.get(j)) {
            (Some(h), Some(t)) if h.key == t.1 => {
                if h.md5 != t.2 {
                    lines.push(changed(Op::Update, h));
                    updated += 1;
                }
                i += 1;
                j += 1;
            }
            (Some(h), Some(t)) if h.key < t.1 => {
                lines.push(changed(Op::Insert, h));
                inserted += 1;
                i += 1;
            }
            (Some(h), None) => {
                lines.push(changed(Op::Insert, h));
                inserted += 1;
                i += 1;
            }
            (_, Some(t)) => {
                deleted.push(t.1);
                j += 1;
            }
            (None, None) => unreachable!("the loop runs while either side has rows"),
        }
    }
    for h in here {
        fingerprint.add(&h.md5);
    }
    let unit = UnitHeader {
        tenant,
        table,
        inserted,
        updated,
        deleted: deleted.len() as u64,
        rows: here.len() as i64,
        fingerprint: fingerprint.text(),
    };
    lines.extend(deleted.into_iter().map(|key| Line::Row {
        op: Op::Delete,
        key,
        row: None,
    }));
    (unit, lines)
}

/// The row as the fingerprint and the hash render it: the carried columns, in order, cast to
/// the shared table's types.
pub(super) fn row_expr(shape: &TableShape, alias: &str) -> String {
    let cols: Vec<String> = shape
        .columns
        .iter()
        .map(|c| format!("{alias}.{}::{}", sql::ident(&c.name), c.type_name))
        .collect();
    format!("ROW({})", cols.join(", "))
}

/// [`fingerprint::aggregate`] computed in the agent from the rows' md5s, which the export
/// reads anyway: the sum, as a signed 64-bit integer each, of the first 16 hex digits of
/// every row's md5, written as PostgreSQL writes that `numeric` sum.
#[derive(Default)]
pub(super) struct Fingerprint {
    pub(super) sum: i128,
}

impl Fingerprint {
    fn add(&mut self, md5: &str) {
        // `('x' || left(md5, 16))::bit(64)::int8`: the 64 bits, read as two's complement.
        let bits = md5
            .get(..16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .expect("PostgreSQL's md5 is 32 hex digits");
        self.sum += i128::from(bits as i64);
    }

    fn text(&self) -> String {
        self.sum.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_servers_sum() {
        // From PostgreSQL 15: ('x' || left(md5(v), 16))::bit(64)::int8 for 'abc' and
        // 'hello', and coalesce(sum(that::numeric), 0)::text over both.
        let mut f = Fingerprint::default();
        assert_eq!(f.text(), "0", "no rows: coalesce(.., 0)");
        f.add("900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(f.text(), "-8070080442485551184");
        f.add("5d41402abc4b2a76b9719d911017c592");
        assert_eq!(f.text(), "-1350357771180213722");
    }

    fn row(key: i64, md5: &str) -> SourceRow {
        SourceRow {
            tenant: 1,
            key,
            md5: md5.repeat(32),
            row: format!("{key}\tx"),
        }
    }

    #[test]
    fn a_merge_finds_inserts_updates_and_deletes() {
        let here = [row(1, "a"), row(2, "b"), row(4, "c"), row(9, "d")];
        let there = [
            (1, 1, "a".repeat(32)),
            (1, 2, "0".repeat(32)),
            (1, 3, "e".repeat(32)),
            (1, 4, "c".repeat(32)),
        ];
        let (unit, lines) = compare(1, 5, &here, &there);
        assert_eq!(
            (
                unit.inserted,
                unit.updated,
                unit.deleted,
                unit.rows,
                unit.table
            ),
            (1, 1, 1, 4, 5)
        );
        let ops: Vec<(Op, i64)> = lines
            .iter()
            .map(|l| match l {
                Line::Row { op, key, .. } => (*op, *key),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ops, [(Op::Update, 2), (Op::Insert, 9), (Op::Delete, 3)]);
    }
}
