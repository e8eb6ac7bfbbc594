-- The one schema definition. docker-compose mounts it into the PostgreSQL container, the service
-- applies it at start-up and the tests apply it to their database. Every statement is idempotent.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS images (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    filename VARCHAR(255) NOT NULL,
    original_filename VARCHAR(255) NOT NULL,
    content_type VARCHAR(100) NOT NULL,
    file_size INTEGER NOT NULL CHECK (file_size >= 0),
    file_path VARCHAR(512),
    content_hash CHAR(64) NOT NULL,
    format VARCHAR(16) NOT NULL,
    width INTEGER NOT NULL CHECK (width > 0),
    height INTEGER NOT NULL CHECK (height > 0),
    upload_timestamp TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    processed_timestamp TIMESTAMP WITH TIME ZONE,
    embedding_vector VECTOR(512) NOT NULL,
    embedding_model VARCHAR(64) NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    processing_status VARCHAR(50) NOT NULL DEFAULT 'pending',
    CONSTRAINT images_content_hash_key UNIQUE (content_hash)
);

-- A 512-d vector is about 2 KB; kept inline (not TOASTed) it makes exact scans and index builds
-- several times faster.
ALTER TABLE images ALTER COLUMN embedding_vector SET STORAGE PLAIN;

-- The keypoints near-duplicate verification compares (app/imaging/verification.py), written at
-- upload: up to 28 KB a row, stored out of line (TOAST, not compressed: descriptors are random
-- bits). NULL: not computed yet (verification off at upload, or a row older than the column);
-- `python -m app reembed` fills it in.
ALTER TABLE images ADD COLUMN IF NOT EXISTS local_features BYTEA;
ALTER TABLE images ALTER COLUMN local_features SET STORAGE EXTERNAL;

-- Listing is newest first with a stable tie-break.
CREATE INDEX IF NOT EXISTS images_upload_timestamp_idx ON images (upload_timestamp DESC, id DESC);

-- The cosine vector index (images_embedding_vector_idx) is not created here: its kind and
-- parameters are settings (VECTOR_INDEX, HNSW_*, IVFFLAT_*, VECTOR_STORAGE), and an IVFFlat
-- index must not be built on an empty table. The service builds it at start-up, by default:
--   CREATE INDEX images_embedding_vector_idx ON images
--       USING hnsw (embedding_vector vector_cosine_ops) WITH (m = 16, ef_construction = 64);

-- API keys (README, "Access and limits"). Only the SHA-256 digest of a key is stored, never the
-- key. A name belongs to one active key at a time; a revoked key keeps its row (and its name
-- may be given to a new key).
CREATE TABLE IF NOT EXISTS api_keys (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(64) NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$'),
    scope VARCHAR(8) NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    key_digest CHAR(64) NOT NULL,
    rate_limit DOUBLE PRECISION CHECK (rate_limit > 0),
    burst INTEGER CHECK (burst > 0),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    revoked_at TIMESTAMP WITH TIME ZONE,
    CONSTRAINT api_keys_key_digest_key UNIQUE (key_digest)
);

CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name_idx ON api_keys (name)
    WHERE revoked_at IS NULL;
