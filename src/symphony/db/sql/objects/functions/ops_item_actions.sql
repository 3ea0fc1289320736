-- symphony.ops_item_actions: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0014_operators.sql.

-- An item's operator history, oldest first: the recorded actions, and the review decisions
-- made from the command line (symphony review resolve: decided_by is the operator's name, the
-- login is the control principal), which have no action row of their own.
CREATE OR REPLACE FUNCTION symphony.ops_item_actions(
    p_outbox_id uuid
) RETURNS TABLE (
    action_id      bigint,
    action         text,
    actor_token_id uuid,
    actor_label    text,
    reason         text,
    outcome        jsonb,
    recorded_at    timestamptz,
    recorded_by    text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT x.action_id, x.action, x.actor_token_id, x.actor_label, x.reason, x.outcome,
           x.recorded_at, x.recorded_by
      FROM (
        SELECT a.action_id, a.action, a.actor_token_id, a.actor_label, a.reason, a.outcome,
               a.recorded_at, a.recorded_by
          FROM symphony_ops.operator_actions a
         WHERE a.outbox_id = p_outbox_id
        UNION ALL
        SELECT NULL::bigint, 'RESOLVE_REVIEW', NULL::uuid, d.decided_by, d.reason,
               jsonb_build_object('decision', d.decision,
                                  'rail_transaction_id', d.rail_transaction_id),
               d.decided_at, d.recorded_by
          FROM outbox_review_decisions d
         WHERE d.outbox_id = p_outbox_id
           AND d.decided_by NOT LIKE 'token:%'
      ) x
     ORDER BY x.recorded_at, x.action_id
$$;

REVOKE ALL ON FUNCTION symphony.ops_item_actions(uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_item_actions(uuid)
    TO symphony_control, symphony_readonly;
