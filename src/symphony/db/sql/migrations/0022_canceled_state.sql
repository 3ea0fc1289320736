-- 0022 — the CANCELED ledger state, on its own.
--
-- Why a migration of its own: a value added to an enum cannot be used in the transaction that
-- adds it (PostgreSQL refuses "unsafe use of new value"), and each migration is one
-- transaction. The rules of the state (legal transitions, the terminal index, I7, the cancel
-- functions) come in the next migration, once this one has committed. Nothing can write the
-- value in between: the ledger's transition trigger still refuses it until then.

SET LOCAL ROLE symphony_owner;

ALTER TYPE symphony.attempt_state ADD VALUE IF NOT EXISTS 'CANCELED';
