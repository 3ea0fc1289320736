-- 0014 — operators act, accountably: scoped operator tokens, operator actions, the worker
-- fleet's heartbeats, and the reads of the operator's views.
--
-- Why:
-- * Operator tokens carry a scope: VIEWER reads, OPERATOR also acts. Every operator token that
--   exists before this migration becomes VIEWER: least privilege, since nobody chose to let
--   it act when it was issued (an operator who needs to act issues a new token with
--   `--scope operator` and revokes the old one). The scope is fixed at issue, like the kind.
-- * Actions from the API (resolve a review item, revoke a participant or a token; cancel and
--   replay where their functions exist) run as a new runtime role, symphony_operator, that
--   the API's login may become and that may do nothing but execute the action functions.
--   Each function verifies the acting token itself (its id and salted hash, unrevoked,
--   OPERATOR kind, OPERATOR scope, FOR SHARE so a concurrent revocation waits), so neither a
--   viewer token nor an API that only knows a token id can act, and the record names who
--   acted with what the database knows, not what the caller says.
-- * Every action is recorded append-only in symphony_ops.operator_actions: the acting token's
--   id and label (or, from the command line, the operator's name), the reason, the target and
--   what came of it, in the transaction of the action itself.
-- * Workers record a heartbeat (one upsert per heartbeat interval, not per item) through
--   their own role: worker id, bucket range, version, start, last cycle, items in flight,
--   and when the row counts as stale. Readers see the live fleet and the routing buckets that
--   no live worker covers.
-- * The control plane's rows (who acted, which workers run) are not outbox items: they live
--   in their own schema, symphony_ops, outside the per-item tables of symphony that a
--   distributed deployment shards by participant_id; they stay whole on one node
--   (docs/scale-out.md).
-- * Reads for the operator views: a registry index by participant and time (the queue browse
--   by cursor), a ledger index of terminal rows by participant and time (a participant's
--   failure rate), and a function for a participant's live counts (the lease columns that
--   tell its states apart are readable by no runtime role).
-- SQLSTATEs SY060-SY064 are this migration's refusals.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'symphony_operator') THEN
        CREATE ROLE symphony_operator;
    END IF;
    ALTER ROLE symphony_operator NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
        NOREPLICATION NOBYPASSRLS;
    -- PostgreSQL 16+ names the membership options; on 15 a NOINHERIT login's membership
    -- already grants SET ROLE and nothing else.
    IF current_setting('server_version_num')::integer >= 160000 THEN
        EXECUTE 'GRANT symphony_operator TO symphony_api_svc '
                'WITH INHERIT FALSE, SET TRUE, ADMIN FALSE';
    ELSE
        EXECUTE 'GRANT symphony_operator TO symphony_api_svc';
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA symphony TO symphony_operator;
GRANT USAGE ON SCHEMA symphony_meta TO symphony_operator;
GRANT SELECT ON symphony_meta.schema_migrations TO symphony_operator;

CREATE SCHEMA symphony_ops AUTHORIZATION symphony_owner;
REVOKE ALL ON SCHEMA symphony_ops FROM PUBLIC;

SET LOCAL ROLE symphony_owner;

-- token scopes ----------------------------------------------------------------------------------

ALTER TABLE symphony.api_tokens ADD COLUMN scope text;

-- The backfill is the one UPDATE of this table that is not a revocation: the forward-only
-- trigger is disabled for it inside this transaction and enabled ALWAYS again at once.
ALTER TABLE symphony.api_tokens DISABLE TRIGGER api_tokens_forward_only;
UPDATE symphony.api_tokens SET scope = 'VIEWER' WHERE kind = 'OPERATOR';
ALTER TABLE symphony.api_tokens ENABLE ALWAYS TRIGGER api_tokens_forward_only;

ALTER TABLE symphony.api_tokens
    ADD CONSTRAINT api_tokens_scope_known CHECK (scope IN ('VIEWER', 'OPERATOR')),
    ADD CONSTRAINT api_tokens_scope_iff_operator CHECK ((kind = 'OPERATOR') = (scope IS NOT NULL));

-- As in 0007, and the scope is fixed like the kind.
CREATE OR REPLACE FUNCTION symphony.check_access_forward_only() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION '% rows are never removed', TG_TABLE_NAME
            USING ERRCODE = 'P0001', CONSTRAINT = TG_TABLE_NAME || '_append_only';
    END IF;
    IF TG_TABLE_NAME = 'participants' THEN
        IF NEW.participant_id <> OLD.participant_id
           OR NEW.created_at <> OLD.created_at
           OR (OLD.status = 'REVOKED'
               AND (NEW.status <> 'REVOKED' OR NEW.revoked_at <> OLD.revoked_at
                    OR NEW.display_name <> OLD.display_name)) THEN
            RAISE EXCEPTION 'a participant keeps its identity and only moves ACTIVE -> REVOKED'
                USING ERRCODE = 'SY038', CONSTRAINT = 'participants_status_forward_only';
        END IF;
    ELSE
        IF NEW.token_id <> OLD.token_id
           OR NEW.kind <> OLD.kind
           OR NEW.scope IS DISTINCT FROM OLD.scope
           OR NEW.participant_id IS DISTINCT FROM OLD.participant_id
           OR NEW.label <> OLD.label
           OR NEW.secret_salt <> OLD.secret_salt
           OR NEW.secret_hash <> OLD.secret_hash
           OR NEW.created_at <> OLD.created_at
           OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
           OR (OLD.revoked_at IS NULL AND NEW.revoked_at IS NULL) THEN
            RAISE EXCEPTION 'a token can only be revoked, once'
                USING ERRCODE = 'SY038', CONSTRAINT = 'api_tokens_revocation_forward_only';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- issue: the scope is an argument of issue_scoped_api_token (an operator token without one
-- is refused there, not defaulted: the command line chooses VIEWER when the operator does not
-- say). issue_api_token of 0007 stays for its callers and issues what is safe: an operator
-- token it makes is a VIEWER.
CREATE FUNCTION symphony.issue_scoped_api_token(
    p_token_id       uuid,
    p_kind           text,
    p_participant_id text,
    p_label          text,
    p_secret_salt    bytea,
    p_secret_hash    bytea,
    p_scope          text
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    label          text,
    scope          text,
    created_at     timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_token_id IS NULL OR p_kind IS NULL OR p_kind NOT IN ('PARTICIPANT', 'OPERATOR')
       OR (p_kind = 'PARTICIPANT') <> (p_participant_id IS NOT NULL)
       OR (p_kind = 'OPERATOR') <> (p_scope IS NOT NULL)
       OR (p_scope IS NOT NULL AND p_scope NOT IN ('VIEWER', 'OPERATOR'))
       OR p_label IS NULL OR char_length(p_label) > 200
       OR p_label ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'
       OR octet_length(p_secret_salt) IS DISTINCT FROM 16
       OR octet_length(p_secret_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'a token is PARTICIPANT (with a participant) or OPERATOR (without, with '
                        'a scope of VIEWER or OPERATOR), with a label of at most 200 characters'
            USING ERRCODE = 'SY036', CONSTRAINT = 'issue_api_token_request';
    END IF;
    IF p_participant_id IS NOT NULL THEN
        PERFORM 1 FROM participants pt WHERE pt.participant_id = p_participant_id FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no participant with this id'
                USING ERRCODE = 'SY034', CONSTRAINT = 'issue_api_token_participant_known';
        END IF;
        PERFORM 1 FROM participants pt
         WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the participant is not active'
                USING ERRCODE = 'SY030', CONSTRAINT = 'issue_api_token_participant_active';
        END IF;
    END IF;
    RETURN QUERY
    INSERT INTO api_tokens AS t
        (token_id, kind, participant_id, label, secret_salt, secret_hash, scope)
    VALUES (p_token_id, p_kind, p_participant_id, p_label, p_secret_salt, p_secret_hash, p_scope)
    RETURNING t.token_id, t.kind, t.participant_id, t.label, t.scope, t.created_at;
END
$$;

CREATE OR REPLACE FUNCTION symphony.issue_api_token(
    p_token_id       uuid,
    p_kind           text,
    p_participant_id text,
    p_label          text,
    p_secret_salt    bytea,
    p_secret_hash    bytea
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    label          text,
    created_at     timestamptz
)
LANGUAGE sql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.participant_id, t.label, t.created_at
      FROM issue_scoped_api_token(p_token_id, p_kind, p_participant_id, p_label,
                                  p_secret_salt, p_secret_hash,
                                  CASE WHEN p_kind = 'OPERATOR' THEN 'VIEWER' END) t
$$;

-- authenticate: as in 0007, and the scope and label come back (the API refuses a viewer's
-- action before asking the database to act, and shows who is signed in).
DROP FUNCTION symphony.authenticate_api_token(uuid, bytea);

CREATE FUNCTION symphony.authenticate_api_token(
    p_token_id    uuid,
    p_secret_hash bytea
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    scope          text,
    label          text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.participant_id, t.scope, t.label
      FROM api_tokens t
      LEFT JOIN participants pt ON pt.participant_id = t.participant_id
     WHERE t.token_id = p_token_id
       AND t.secret_hash = p_secret_hash
       AND t.revoked_at IS NULL
       AND (t.participant_id IS NULL OR pt.status = 'ACTIVE')
$$;

-- Every token without its secret material, for the operator's token list (newest first).
CREATE FUNCTION symphony.ops_api_tokens(
    p_limit integer DEFAULT 200
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    scope          text,
    participant_id text,
    label          text,
    created_at     timestamptz,
    revoked_at     timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.scope, t.participant_id, t.label, t.created_at, t.revoked_at
      FROM api_tokens t
     ORDER BY t.created_at DESC, t.token_id
     LIMIT least(greatest(coalesce(p_limit, 200), 1), 1000)
$$;

-- operator actions ------------------------------------------------------------------------------

CREATE TABLE symphony_ops.operator_actions (
    action_id      bigint GENERATED ALWAYS AS IDENTITY,
    action         text        NOT NULL,
    outbox_id      uuid,
    participant_id text,
    target         text        NOT NULL,
    actor_token_id uuid,
    actor_label    text        NOT NULL,
    reason         text        NOT NULL,
    outcome        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by    text        NOT NULL DEFAULT session_user,
    CONSTRAINT operator_actions_pkey PRIMARY KEY (action_id),
    CONSTRAINT operator_actions_action_known CHECK (action IN (
        'RESOLVE_REVIEW', 'CANCEL_PAYMENT', 'REPLAY_WEBHOOK_DELIVERY', 'REVOKE_PARTICIPANT',
        'REVOKE_TOKEN')),
    CONSTRAINT operator_actions_reason_format
        CHECK (char_length(btrim(reason)) BETWEEN 1 AND 500
               AND reason !~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'),
    CONSTRAINT operator_actions_actor_label_length CHECK (char_length(actor_label) <= 200)
);

CREATE INDEX operator_actions_outbox_idx
    ON symphony_ops.operator_actions (outbox_id, action_id)
    WHERE outbox_id IS NOT NULL;
CREATE INDEX operator_actions_participant_idx
    ON symphony_ops.operator_actions (participant_id, action_id)
    WHERE participant_id IS NOT NULL;
CREATE INDEX operator_actions_recent_idx
    ON symphony_ops.operator_actions (recorded_at, action_id);

CREATE TRIGGER operator_actions_append_only
    BEFORE UPDATE OR DELETE ON symphony_ops.operator_actions
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER operator_actions_no_truncate
    BEFORE TRUNCATE ON symphony_ops.operator_actions
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();
ALTER TABLE symphony_ops.operator_actions
    ENABLE ALWAYS TRIGGER operator_actions_append_only,
    ENABLE ALWAYS TRIGGER operator_actions_no_truncate;

-- Who acts: the token's id and label, if the token is live, of OPERATOR kind and scope. Not
-- granted to anyone: only the action functions (as the owner) call it. FOR SHARE: a
-- revocation of the token waits for the action, or the action sees the revocation.
CREATE FUNCTION symphony.operator_actor(
    p_token_id    uuid,
    p_secret_hash bytea
) RETURNS TABLE (
    token_id uuid,
    label    text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row api_tokens%ROWTYPE;
BEGIN
    SELECT * INTO v_row FROM api_tokens t
     WHERE t.token_id = p_token_id
       AND t.secret_hash = p_secret_hash
       AND t.revoked_at IS NULL
       AND t.kind = 'OPERATOR'
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no live operator token with this id and secret'
            USING ERRCODE = 'SY060', CONSTRAINT = 'operator_actor_token';
    END IF;
    IF v_row.scope IS DISTINCT FROM 'OPERATOR' THEN
        RAISE EXCEPTION 'the token''s scope is %: only an OPERATOR-scope token may act',
                        v_row.scope
            USING ERRCODE = 'SY061', CONSTRAINT = 'operator_actor_scope';
    END IF;
    RETURN QUERY SELECT v_row.token_id, v_row.label;
END
$$;

-- The reason every action needs: 1-500 characters, no control or bidirectional characters.
CREATE FUNCTION symphony.check_operator_reason(p_reason text) RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_reason IS NULL OR char_length(btrim(p_reason)) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'an operator action needs a reason of 1-500 printable characters'
            USING ERRCODE = 'SY063', CONSTRAINT = 'operator_action_reason';
    END IF;
END
$$;

-- resolve a review item with an operator token: the rail's confirmed outcome (DISPATCHED with
-- its transaction id, or FAILED), through resolve_outbox_review (0006) so the ledger, the
-- decision record and the audit's review rules are exactly those of the command line. The
-- decision names the token (decided_by 'token:<id>'); the action record adds its label.
CREATE FUNCTION symphony.ops_resolve_review(
    p_token_id            uuid,
    p_secret_hash         bytea,
    p_outbox_id           uuid,
    p_decision            text,
    p_reason              text,
    p_rail_transaction_id text DEFAULT NULL
) RETURNS TABLE (
    action_id  bigint,
    outbox_id  uuid,
    decision   text,
    state      text,
    attempt_no integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor       record;
    v_result      record;
    v_participant text;
    v_action_id   bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    IF p_decision IS NULL OR p_decision NOT IN ('DISPATCHED', 'FAILED') THEN
        RAISE EXCEPTION 'an operator resolves a review with the rail''s outcome: DISPATCHED or '
                        'FAILED'
            USING ERRCODE = 'SY041', CONSTRAINT = 'ops_resolve_review_decision';
    END IF;
    SELECT * INTO v_result
      FROM resolve_outbox_review(p_outbox_id, p_decision, 'token:' || v_actor.token_id::text,
                                 p_reason, p_rail_transaction_id) r;
    SELECT r.participant_id INTO v_participant
      FROM payment_instruction_registry r WHERE r.outbox_id = p_outbox_id;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('RESOLVE_REVIEW', p_outbox_id, v_participant, p_outbox_id::text, v_actor.token_id,
            v_actor.label, p_reason,
            jsonb_build_object('decision', p_decision,
                               'rail_transaction_id', p_rail_transaction_id,
                               'state', v_result.state, 'attempt_no', v_result.attempt_no))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, p_outbox_id, p_decision, v_result.state::text,
                        v_result.attempt_no::integer;
END
$$;

-- revoke a participant (and its tokens) with an operator token. Revoking a participant that
-- is already revoked lost a race (or repeats one): SY062 and nothing is written.
CREATE FUNCTION symphony.ops_revoke_participant(
    p_token_id       uuid,
    p_secret_hash    bytea,
    p_participant_id text,
    p_reason         text
) RETURNS TABLE (
    action_id      bigint,
    participant_id text,
    status         text,
    revoked_at     timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor     record;
    v_row       participants%ROWTYPE;
    v_action_id bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_row FROM participants pt
     WHERE pt.participant_id = p_participant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no participant with this id'
            USING ERRCODE = 'SY034', CONSTRAINT = 'ops_revoke_participant_known';
    END IF;
    IF v_row.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'the participant is already revoked'
            USING ERRCODE = 'SY062', CONSTRAINT = 'ops_revoke_participant_active';
    END IF;
    SELECT * INTO v_row FROM revoke_participant(p_participant_id);
    INSERT INTO symphony_ops.operator_actions
        (action, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('REVOKE_PARTICIPANT', p_participant_id, p_participant_id, v_actor.token_id,
            v_actor.label, p_reason, jsonb_build_object('status', v_row.status))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, v_row.participant_id, v_row.status, v_row.revoked_at;
END
$$;

-- revoke a token (a participant's or an operator's, the acting one included) with an
-- operator token. A token already revoked: SY062, nothing written.
CREATE FUNCTION symphony.ops_revoke_token(
    p_token_id        uuid,
    p_secret_hash     bytea,
    p_target_token_id uuid,
    p_reason          text
) RETURNS TABLE (
    action_id  bigint,
    token_id   uuid,
    revoked_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor     record;
    v_target    api_tokens%ROWTYPE;
    v_revoked   timestamptz;
    v_action_id bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_target FROM api_tokens t WHERE t.token_id = p_target_token_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no token with this id'
            USING ERRCODE = 'SY037', CONSTRAINT = 'ops_revoke_token_known';
    END IF;
    IF v_target.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'the token is already revoked'
            USING ERRCODE = 'SY062', CONSTRAINT = 'ops_revoke_token_live';
    END IF;
    SELECT r.revoked_at INTO v_revoked FROM revoke_api_token(p_target_token_id) r;
    INSERT INTO symphony_ops.operator_actions
        (action, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('REVOKE_TOKEN', v_target.participant_id, p_target_token_id::text, v_actor.token_id,
            v_actor.label, p_reason,
            jsonb_build_object('kind', v_target.kind, 'scope', v_target.scope,
                               'label', v_target.label))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, p_target_token_id, v_revoked;
END
$$;

-- An item's operator history, oldest first: the recorded actions, and the review decisions
-- made from the command line (symphony review resolve: decided_by is the operator's name, the
-- login is the control principal), which have no action row of their own.
CREATE FUNCTION symphony.ops_item_actions(
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

-- the fleet -------------------------------------------------------------------------------------

CREATE TABLE symphony_ops.worker_heartbeats (
    worker_id           text        NOT NULL,
    bucket_from         smallint    NOT NULL,
    bucket_to           smallint    NOT NULL,
    version             text        NOT NULL,
    started_at          timestamptz NOT NULL,
    last_cycle_at       timestamptz,
    in_flight           integer     NOT NULL,
    stale_after_seconds integer     NOT NULL,
    heartbeat_at        timestamptz NOT NULL,
    login               text        NOT NULL DEFAULT session_user,
    CONSTRAINT worker_heartbeats_pkey PRIMARY KEY (worker_id),
    CONSTRAINT worker_heartbeats_worker_id_format CHECK (char_length(worker_id) BETWEEN 1 AND 128),
    CONSTRAINT worker_heartbeats_bucket_range
        CHECK (bucket_from BETWEEN 0 AND 255 AND bucket_to BETWEEN bucket_from AND 255),
    CONSTRAINT worker_heartbeats_version_format CHECK (char_length(version) BETWEEN 1 AND 64),
    CONSTRAINT worker_heartbeats_in_flight_range CHECK (in_flight >= 0),
    CONSTRAINT worker_heartbeats_stale_after_range CHECK (stale_after_seconds BETWEEN 1 AND 3600)
);

-- A worker's heartbeat: one upsert per heartbeat interval. The database's clock stamps it
-- (workers' clocks may disagree). Rows of workers silent for a day are removed on the way:
-- the fleet shows a dead worker as stale for a day, then forgets it.
CREATE FUNCTION symphony.record_worker_heartbeat(
    p_worker_id           text,
    p_bucket_from         integer,
    p_bucket_to           integer,
    p_version             text,
    p_started_at          timestamptz,
    p_last_cycle_at       timestamptz,
    p_in_flight           integer,
    p_stale_after_seconds integer
) RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'heartbeat_worker_id';
    END IF;
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL OR p_bucket_from NOT BETWEEN 0 AND 255
       OR p_bucket_to NOT BETWEEN p_bucket_from AND 255 THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'heartbeat_bucket_range';
    END IF;
    IF p_version IS NULL OR char_length(p_version) NOT BETWEEN 1 AND 64
       OR p_started_at IS NULL OR p_in_flight IS NULL OR p_in_flight < 0
       OR p_stale_after_seconds IS NULL OR p_stale_after_seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION 'a heartbeat needs a version (1-64 characters), a start time, an '
                        'in-flight count >= 0 and a staleness of 1-3600 s'
            USING ERRCODE = 'SY064', CONSTRAINT = 'heartbeat_fields';
    END IF;
    INSERT INTO symphony_ops.worker_heartbeats AS h
        (worker_id, bucket_from, bucket_to, version, started_at, last_cycle_at, in_flight,
         stale_after_seconds, heartbeat_at)
    VALUES (p_worker_id, p_bucket_from, p_bucket_to, p_version, p_started_at, p_last_cycle_at,
            p_in_flight, p_stale_after_seconds, v_at)
    ON CONFLICT ON CONSTRAINT worker_heartbeats_pkey DO UPDATE
       SET bucket_from = excluded.bucket_from, bucket_to = excluded.bucket_to,
           version = excluded.version, started_at = excluded.started_at,
           last_cycle_at = excluded.last_cycle_at, in_flight = excluded.in_flight,
           stale_after_seconds = excluded.stale_after_seconds,
           heartbeat_at = excluded.heartbeat_at, login = session_user;
    DELETE FROM symphony_ops.worker_heartbeats h
     WHERE h.heartbeat_at < v_at - interval '1 day';
    RETURN v_at;
END
$$;

-- A worker that stops cleanly leaves the fleet at once (its buckets show as uncovered if no
-- other live worker has them: that is the truth).
CREATE FUNCTION symphony.end_worker_heartbeat(
    p_worker_id text
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM symphony_ops.worker_heartbeats h WHERE h.worker_id = p_worker_id;
    RETURN FOUND;
END
$$;

-- participant view ------------------------------------------------------------------------------

-- The queue browse by participant, newest first, by cursor.
CREATE INDEX payment_instruction_registry_participant_created_idx
    ON symphony.payment_instruction_registry (participant_id, created_at, outbox_id);

-- A participant's items that ended, by time: its failure rate over the last hour and its
-- terminal counts read a range of this index, not the ledger.
CREATE INDEX payment_outbox_attempts_participant_terminal_idx
    ON symphony.payment_outbox_attempts (participant_id, recorded_at)
    WHERE state IN ('DISPATCHED', 'FAILED');

-- A participant's live items by state, its oldest pending item, and its items that ended in
-- the last hour and day. The pending rows are found through the participant's bucket (the
-- bucket indexes of 0010 and the review index), never by a pass over the queue.
CREATE FUNCTION symphony.ops_participant_summary(
    p_participant_id text
) RETURNS TABLE (
    participant_id     text,
    display_name       text,
    status             text,
    bucket             smallint,
    due                bigint,
    scheduled          bigint,
    dispatching        bigint,
    zombies            bigint,
    under_review       bigint,
    pending_total      bigint,
    oldest_pending_at  timestamptz,
    dispatched_last_hour bigint,
    failed_last_hour   bigint,
    dispatched_last_day  bigint,
    failed_last_day    bigint,
    observed_at        timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    WITH pt AS (
        SELECT x.participant_id, x.display_name, x.status, x.bucket
          FROM participants x WHERE x.participant_id = p_participant_id
    ),
    live AS (
        SELECT p.next_attempt_at, p.created_at, 'WAITING'::text AS kind, NULL::timestamptz AS exp
          FROM payment_outbox_pending p, pt
         WHERE p.bucket = pt.bucket AND p.participant_id = pt.participant_id
           AND p.lease_token IS NULL AND p.review_reason IS NULL
        UNION ALL
        SELECT p.next_attempt_at, p.created_at, 'LEASED', p.lease_expires_at
          FROM payment_outbox_pending p, pt
         WHERE p.bucket = pt.bucket AND p.participant_id = pt.participant_id
           AND p.lease_token IS NOT NULL
        UNION ALL
        SELECT p.next_attempt_at, p.created_at, 'REVIEW', NULL
          FROM payment_outbox_pending p, pt
         WHERE p.review_reason IS NOT NULL AND p.participant_id = pt.participant_id
    ),
    ended AS (
        SELECT a.state, a.recorded_at
          FROM payment_outbox_attempts a, pt
         WHERE a.participant_id = pt.participant_id
           AND a.state IN ('DISPATCHED', 'FAILED')
           AND a.recorded_at >= now() - interval '1 day'
    )
    SELECT pt.participant_id, pt.display_name, pt.status, pt.bucket,
           (SELECT count(*) FROM live WHERE kind = 'WAITING' AND next_attempt_at <= now()),
           (SELECT count(*) FROM live WHERE kind = 'WAITING' AND next_attempt_at > now()),
           (SELECT count(*) FROM live WHERE kind = 'LEASED' AND exp > now()),
           (SELECT count(*) FROM live WHERE kind = 'LEASED' AND exp <= now()),
           (SELECT count(*) FROM live WHERE kind = 'REVIEW'),
           (SELECT count(*) FROM live),
           (SELECT min(created_at) FROM live),
           (SELECT count(*) FROM ended e WHERE e.state = 'DISPATCHED'
                                            AND e.recorded_at >= now() - interval '1 hour'),
           (SELECT count(*) FROM ended e WHERE e.state = 'FAILED'
                                            AND e.recorded_at >= now() - interval '1 hour'),
           (SELECT count(*) FROM ended e WHERE e.state = 'DISPATCHED'),
           (SELECT count(*) FROM ended e WHERE e.state = 'FAILED'),
           now()
      FROM pt
$$;

RESET ROLE;

-- grants ----------------------------------------------------------------------------------------

REVOKE ALL ON symphony_ops.operator_actions, symphony_ops.worker_heartbeats FROM PUBLIC;
REVOKE ALL ON FUNCTION
    symphony.issue_scoped_api_token(uuid, text, text, text, bytea, bytea, text),
    symphony.authenticate_api_token(uuid, bytea),
    symphony.ops_api_tokens(integer),
    symphony.operator_actor(uuid, bytea),
    symphony.check_operator_reason(text),
    symphony.ops_resolve_review(uuid, bytea, uuid, text, text, text),
    symphony.ops_revoke_participant(uuid, bytea, text, text),
    symphony.ops_revoke_token(uuid, bytea, uuid, text),
    symphony.ops_item_actions(uuid),
    symphony.record_worker_heartbeat(text, integer, integer, text, timestamptz, timestamptz,
                                     integer, integer),
    symphony.end_worker_heartbeat(text),
    symphony.ops_participant_summary(text)
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    symphony.issue_scoped_api_token(uuid, text, text, text, bytea, bytea, text)
    TO symphony_control;
GRANT EXECUTE ON FUNCTION symphony.authenticate_api_token(uuid, bytea)
    TO symphony_readonly, symphony_control;

-- The API's actions, each verifying its acting token.
GRANT EXECUTE ON FUNCTION
    symphony.ops_resolve_review(uuid, bytea, uuid, text, text, text),
    symphony.ops_revoke_participant(uuid, bytea, text, text),
    symphony.ops_revoke_token(uuid, bytea, uuid, text)
    TO symphony_operator;

-- The operator's reads (the API reads as readonly; the command line as control).
GRANT EXECUTE ON FUNCTION
    symphony.ops_api_tokens(integer),
    symphony.ops_item_actions(uuid),
    symphony.ops_participant_summary(text)
    TO symphony_readonly, symphony_control;
GRANT USAGE ON SCHEMA symphony_ops TO symphony_readonly, symphony_control, symphony_auditor;
GRANT SELECT ON symphony_ops.operator_actions, symphony_ops.worker_heartbeats
    TO symphony_readonly, symphony_control, symphony_auditor;

-- The worker's heartbeat, through its own role.
GRANT EXECUTE ON FUNCTION
    symphony.record_worker_heartbeat(text, integer, integer, text, timestamptz, timestamptz,
                                     integer, integer),
    symphony.end_worker_heartbeat(text)
    TO symphony_executor;
