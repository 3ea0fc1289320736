-- 0002 — the outbox tables.
--
-- Why this shape:
-- * payment_instruction_registry remembers every (instruction_id, idempotency_key) for ever
--   (I1): the pending row disappears when an item reaches a terminal state, the promise that a
--   retried request gets the same outbox_id must not.
-- * payment_outbox_pending is the hot queue: one narrow row per live item (I2), indexed for
--   the two questions asked of it every second: what is due, and which leases went stale.
-- * payment_outbox_attempts is the append-only ledger an auditor reads; attempt_no is dense
--   per item (I4) and at most one terminal row exists per item (I6).
-- * participant_outbox_sequences allocates per-participant sequence numbers under a row lock,
--   so they are strictly increasing in enqueue order (I8).
-- Every constraint and index is named: the application maps errors by these names.

SET LOCAL ROLE symphony_owner;

CREATE TYPE symphony.attempt_state AS ENUM (
    'DISPATCHING',
    'DISPATCHED',
    'RETRYABLE',
    'FAILED',
    'ZOMBIE_REQUEUE'
);

-- Payment rails an instruction may name. A table rather than a CHECK so that operations can
-- add a rail without a schema change to the ledger.
CREATE TABLE symphony.payment_rails (
    rail_type   text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_rails_pkey PRIMARY KEY (rail_type),
    CONSTRAINT payment_rails_rail_type_format CHECK (rail_type ~ '^[A-Z][A-Z0-9_]{1,31}$')
);

INSERT INTO symphony.payment_rails (rail_type, description) VALUES
    ('ACH', 'Automated Clearing House credit transfer'),
    ('RTP', 'Real-time payment'),
    ('SEPA_CT', 'SEPA credit transfer'),
    ('FPS', 'Faster Payments'),
    ('WIRE', 'Wire transfer');

-- Retry policy, read by complete_outbox_attempt. One row: the ceiling on attempts is a rule of
-- the database, not a number each worker may choose for itself.
CREATE TABLE symphony.outbox_retry_policy (
    singleton        boolean     NOT NULL DEFAULT true,
    max_attempts     integer     NOT NULL DEFAULT 8,
    backoff_base_ms  integer     NOT NULL DEFAULT 1000,
    backoff_max_ms   integer     NOT NULL DEFAULT 300000,
    jitter_ratio     numeric     NOT NULL DEFAULT 0.2,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_retry_policy_pkey PRIMARY KEY (singleton),
    CONSTRAINT outbox_retry_policy_singleton CHECK (singleton),
    CONSTRAINT outbox_retry_policy_max_attempts CHECK (max_attempts BETWEEN 1 AND 1000),
    CONSTRAINT outbox_retry_policy_backoff_base CHECK (backoff_base_ms BETWEEN 0 AND 86400000),
    CONSTRAINT outbox_retry_policy_backoff_max
        CHECK (backoff_max_ms BETWEEN backoff_base_ms AND 86400000),
    CONSTRAINT outbox_retry_policy_jitter CHECK (jitter_ratio >= 0 AND jitter_ratio <= 1)
);

INSERT INTO symphony.outbox_retry_policy DEFAULT VALUES;

CREATE TABLE symphony.participant_outbox_sequences (
    participant_id   text        NOT NULL,
    last_sequence_id bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT participant_outbox_sequences_pkey PRIMARY KEY (participant_id),
    CONSTRAINT participant_outbox_sequences_positive CHECK (last_sequence_id >= 1)
);

CREATE TABLE symphony.payment_instruction_registry (
    instruction_id  text        NOT NULL,
    idempotency_key text        NOT NULL,
    outbox_id       uuid        NOT NULL,
    participant_id  text        NOT NULL,
    sequence_id     bigint      NOT NULL,
    rail_type       text        NOT NULL,
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_instruction_registry_pkey PRIMARY KEY (instruction_id, idempotency_key),
    CONSTRAINT payment_instruction_registry_outbox_id_key UNIQUE (outbox_id),
    CONSTRAINT payment_instruction_registry_participant_sequence_key
        UNIQUE (participant_id, sequence_id),
    CONSTRAINT payment_instruction_registry_rail_type_fkey
        FOREIGN KEY (rail_type) REFERENCES symphony.payment_rails (rail_type),
    CONSTRAINT payment_instruction_registry_payload_object
        CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT payment_instruction_registry_sequence_positive CHECK (sequence_id >= 1)
);

CREATE TABLE symphony.payment_outbox_pending (
    outbox_id        uuid                    NOT NULL,
    participant_id   text                    NOT NULL,
    sequence_id      bigint                  NOT NULL,
    -- Number of dispatch attempts started (DISPATCHING rows). Never decreases (I4).
    attempt_count    integer                 NOT NULL DEFAULT 0,
    -- attempt_no of the item's newest ledger row, so the next one is known without a scan.
    last_attempt_no  integer                 NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz             NOT NULL DEFAULT now(),
    claimed_by       text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    claimed_at       timestamptz,
    -- Some attempt ended without knowing whether the rail executed it (timeout, zombie).
    -- Sticky: from then on every dispatcher asks the rail first (I10), and the retry ceiling
    -- may no longer declare the item FAILED (the money may have moved).
    needs_lookup     boolean                 NOT NULL DEFAULT false,
    last_error_code  text,
    created_at       timestamptz             NOT NULL DEFAULT now(),
    updated_at       timestamptz             NOT NULL DEFAULT now(),
    CONSTRAINT payment_outbox_pending_pkey PRIMARY KEY (outbox_id),
    CONSTRAINT payment_outbox_pending_outbox_id_fkey
        FOREIGN KEY (outbox_id) REFERENCES symphony.payment_instruction_registry (outbox_id),
    CONSTRAINT payment_outbox_pending_attempt_count_nonnegative CHECK (attempt_count >= 0),
    CONSTRAINT payment_outbox_pending_last_attempt_no_nonnegative CHECK (last_attempt_no >= 0),
    -- A lease is all or nothing: a half-written lease would be neither claimable nor repairable.
    CONSTRAINT payment_outbox_pending_lease_complete CHECK (
        (lease_token IS NULL AND claimed_by IS NULL AND lease_expires_at IS NULL
            AND claimed_at IS NULL)
        OR (lease_token IS NOT NULL AND claimed_by IS NOT NULL AND lease_expires_at IS NOT NULL
            AND claimed_at IS NOT NULL)
    )
);

-- What is due: claim reads this index in next_attempt_at order and stops at the batch size.
CREATE INDEX payment_outbox_pending_due_idx
    ON symphony.payment_outbox_pending (next_attempt_at)
    WHERE lease_token IS NULL;

-- Which leases went stale: repair cost grows with the stale items, not with the table.
CREATE INDEX payment_outbox_pending_lease_expiry_idx
    ON symphony.payment_outbox_pending (lease_expires_at)
    WHERE lease_token IS NOT NULL;

CREATE TABLE symphony.payment_outbox_attempts (
    attempt_id          bigint GENERATED ALWAYS AS IDENTITY,
    outbox_id           uuid                   NOT NULL,
    attempt_no          integer                NOT NULL,
    state               symphony.attempt_state NOT NULL,
    worker_id           text,
    lease_token         uuid,
    error_code          text,
    error_detail        text,
    rail_transaction_id text,
    recorded_at         timestamptz            NOT NULL DEFAULT clock_timestamp(),
    -- The login that caused the row (the service principal, through the functions).
    recorded_by         text                   NOT NULL DEFAULT session_user,
    CONSTRAINT payment_outbox_attempts_pkey PRIMARY KEY (attempt_id),
    CONSTRAINT payment_outbox_attempts_outbox_id_fkey
        FOREIGN KEY (outbox_id) REFERENCES symphony.payment_instruction_registry (outbox_id),
    CONSTRAINT payment_outbox_attempts_outbox_attempt_no_key UNIQUE (outbox_id, attempt_no),
    CONSTRAINT payment_outbox_attempts_attempt_no_positive CHECK (attempt_no >= 1),
    CONSTRAINT payment_outbox_attempts_error_code_length CHECK (char_length(error_code) <= 64),
    CONSTRAINT payment_outbox_attempts_error_detail_length
        CHECK (char_length(error_detail) <= 1000)
);

-- I6: at most one DISPATCHED row, and at most one terminal row, per item.
CREATE UNIQUE INDEX payment_outbox_attempts_one_dispatched_idx
    ON symphony.payment_outbox_attempts (outbox_id)
    WHERE state = 'DISPATCHED';

CREATE UNIQUE INDEX payment_outbox_attempts_one_terminal_idx
    ON symphony.payment_outbox_attempts (outbox_id)
    WHERE state IN ('DISPATCHED', 'FAILED');
