//! The catalog queries the drop runs: what depends on a tenant schema from outside it, what a
//! dropped schema left behind, and its tables and their links for the drop order.

/// Objects outside each tenant schema that depend on an object inside it (a table, a type, a
/// function), with where they live. A dependent's home is its own schema, or for a rule,
/// trigger, default, policy or constraint the schema of its table; an object of any other
/// catalog has no known home and is reported, to be safe.
pub(super) const DEPENDENTS_SQL: &str = "
WITH inside AS (
    SELECT 'pg_class'::regclass AS classid, c.oid AS objid, c.relnamespace AS nsp
      FROM pg_class c WHERE c.relnamespace::int8 = ANY($1)
    UNION ALL
    SELECT 'pg_type'::regclass, t.oid, t.typnamespace FROM pg_type t WHERE t.typnamespace::int8 = ANY($1)
    UNION ALL
    SELECT 'pg_proc'::regclass, p.oid, p.pronamespace FROM pg_proc p WHERE p.pronamespace::int8 = ANY($1)
), dependents AS (
    SELECT DISTINCT d.classid, d.objid, i.nsp, i.classid AS refclassid, i.objid AS refobjid
      FROM pg_depend d
      JOIN inside i ON d.refclassid = i.classid AND d.refobjid = i.objid
     WHERE d.deptype IN ('n', 'a')
), placed AS (
    SELECT d.*,
           CASE d.classid
             WHEN 'pg_class'::regclass THEN (SELECT c.relnamespace FROM pg_class c WHERE c.oid = d.objid)
             WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
             WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.oid = d.objid)
             WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
             WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
             WHEN 'pg_constraint'::regclass THEN (
                 SELECT coalesce(c.relnamespace, t.typnamespace, k.connamespace) FROM pg_constraint k
                   LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
                  WHERE k.oid = d.objid)
             WHEN 'pg_proc'::regclass THEN (SELECT p.pronamespace FROM pg_proc p WHERE p.oid = d.objid)
             WHEN 'pg_type'::regclass THEN (SELECT t.typnamespace FROM pg_type t WHERE t.oid = d.objid)
             WHEN 'pg_statistic_ext'::regclass THEN (SELECT s.stxnamespace FROM pg_statistic_ext s WHERE s.oid = d.objid)
           END AS home,
           -- A view is known by its name, not by its rule's.
           CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass::oid ELSE d.classid END AS shown_class,
           CASE WHEN d.classid = 'pg_rewrite'::regclass
                THEN (SELECT r.ev_class FROM pg_rewrite r WHERE r.oid = d.objid) ELSE d.objid END AS shown_obj
      FROM dependents d
)
SELECT n.nspname::text,
       dep.type || ' ' || dep.identity,
       string_agg(DISTINCT ref.type || ' ' || ref.identity, ', ')
  FROM placed p
  JOIN pg_namespace n ON n.oid = p.nsp
  CROSS JOIN LATERAL pg_identify_object(p.shown_class, p.shown_obj, 0) dep
  CROSS JOIN LATERAL pg_identify_object(p.refclassid, p.refobjid, 0) ref
 WHERE p.home IS DISTINCT FROM p.nsp
 GROUP BY 1, 2
 ORDER BY 1, 2";

/// Objects inside each tenant schema other than its tables and the sequences they own: a
/// view, a function, a type, a free-standing sequence. Dropping the tables leaves them, and
/// `DROP SCHEMA … RESTRICT` would then refuse.
pub(super) const LEFTOVERS_SQL: &str = "
SELECT n.nspname::text, o.type || ' ' || o.identity
  FROM pg_depend d
  JOIN pg_namespace n ON n.oid = d.refobjid
  CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) o
 WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid::int8 = ANY($1) AND d.deptype = 'n'
   AND NOT EXISTS (
       SELECT 1 FROM pg_class c
        WHERE d.classid = 'pg_class'::regclass AND c.oid = d.objid
          AND (c.relkind IN ('r', 'p')
               OR (c.relkind = 'S' AND EXISTS (
                   SELECT 1 FROM pg_depend o JOIN pg_class t ON t.oid = o.refobjid
                    WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid
                      AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i')
                      AND t.relnamespace = c.relnamespace AND t.relkind IN ('r', 'p')))))
 ORDER BY 1, 2";

/// Each schema's tables (partitions of a table in the same schema go with their parent).
pub(super) const TABLES_SQL: &str = "
SELECT n.nspname::text, c.relname::text, c.oid::int8
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relnamespace::int8 = ANY($1) AND c.relkind IN ('r', 'p')
   AND NOT (c.relispartition AND EXISTS (
       SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
        WHERE i.inhrelid = c.oid AND p.relnamespace = c.relnamespace))";

/// References between tables of the same schema: foreign keys (with their name) and plain
/// inheritance; the referencing table must go first.
pub(super) const EDGES_SQL: &str = "
SELECT k.conrelid::int8, k.confrelid::int8, k.conname::text
  FROM pg_constraint k
  JOIN pg_class a ON a.oid = k.conrelid
  JOIN pg_class b ON b.oid = k.confrelid
 WHERE k.contype = 'f' AND a.relnamespace::int8 = ANY($1) AND b.relnamespace = a.relnamespace
   AND k.conrelid <> k.confrelid AND k.conparentid = 0
UNION ALL
SELECT i.inhrelid::int8, i.inhparent::int8, NULL
  FROM pg_inherits i
  JOIN pg_class a ON a.oid = i.inhrelid
  JOIN pg_class b ON b.oid = i.inhparent
 WHERE a.relnamespace::int8 = ANY($1) AND b.relnamespace = a.relnamespace AND NOT a.relispartition";
