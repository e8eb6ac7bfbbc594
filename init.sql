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

-- Region vectors (REGION_VECTORS): each image's embedding of parts of its picture (its four
-- quadrants and its centre, app/imaging/cnn.py), so that a search also finds a picture that shows
-- the query in a part of its frame (a collage tile, a screenshot). Written in the upload's
-- transaction, removed with the image (ON DELETE CASCADE); `python -m app reembed` fills them in.
-- Their own vector index (image_regions_embedding_vector_idx) is built with the images' one.
CREATE TABLE IF NOT EXISTS image_regions (
    image_id UUID NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    region SMALLINT NOT NULL CHECK (region >= 0),
    embedding_model VARCHAR(64) NOT NULL,
    embedding_vector VECTOR(512) NOT NULL,
    PRIMARY KEY (image_id, region)
);

ALTER TABLE image_regions ALTER COLUMN embedding_vector SET STORAGE PLAIN;

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

-- Duplicate groups (README, "Duplicates"; app/services/duplicates.py). A link is a
-- near_duplicate (or exact) match between two stored images; a group is a connected set of
-- linked images, at least two. Links and memberships go with their image (ON DELETE CASCADE);
-- a member leaving flags its group for the split check.

-- One row per build of the links: the settings it ran with; `finished_at` is NULL while a
-- rebuild (`python -m app duplicates --rebuild`) is in progress. The highest number is current.
CREATE TABLE IF NOT EXISTS duplicate_builds (
    build INTEGER PRIMARY KEY,
    embedding_model VARCHAR(64) NOT NULL,
    near_duplicate_threshold DOUBLE PRECISION NOT NULL,
    started_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    finished_at TIMESTAMP WITH TIME ZONE
);
-- How many candidates each link search verified (0: verification off). NULL on a build made
-- before this column existed: its settings are unknown, so the groups ask for a rebuild.
ALTER TABLE duplicate_builds ADD COLUMN IF NOT EXISTS verification_candidates INTEGER;

-- Which build last looked for an image's links (what makes a rebuild resumable).
CREATE TABLE IF NOT EXISTS duplicate_scans (
    image_id UUID PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    build INTEGER NOT NULL
);

-- Each link once, its smaller image id first, with its evidence.
CREATE TABLE IF NOT EXISTS duplicate_links (
    image_a UUID NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    image_b UUID NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    similarity_score REAL NOT NULL,
    match VARCHAR(16) NOT NULL CHECK (match IN ('exact', 'near_duplicate')),
    verification JSONB,
    build INTEGER NOT NULL,
    PRIMARY KEY (image_a, image_b),
    CHECK (image_a < image_b)
);

CREATE INDEX IF NOT EXISTS duplicate_links_image_b_idx ON duplicate_links (image_b);

CREATE TABLE IF NOT EXISTS duplicate_groups (
    id UUID PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size >= 0),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    -- A member left: the rest may no longer be connected (checked and split by the service).
    needs_check BOOLEAN NOT NULL DEFAULT false
);

-- The listing: largest groups first.
CREATE INDEX IF NOT EXISTS duplicate_groups_size_idx ON duplicate_groups (size DESC, created_at, id);
CREATE INDEX IF NOT EXISTS duplicate_groups_needs_check_idx ON duplicate_groups (id)
    WHERE needs_check;

CREATE TABLE IF NOT EXISTS duplicate_members (
    image_id UUID PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    group_id UUID NOT NULL REFERENCES duplicate_groups (id)
);

CREATE INDEX IF NOT EXISTS duplicate_members_group_idx ON duplicate_members (group_id);

-- A person's decision about a pair of pictures, keyed by their content hashes (smaller first),
-- so it holds for any future upload of the same bytes: `not_duplicates`, or `kept_both` (a
-- resolve kept both). Such a pair is never linked again.
CREATE TABLE IF NOT EXISTS duplicate_decisions (
    hash_a CHAR(64) NOT NULL,
    hash_b CHAR(64) NOT NULL,
    decision VARCHAR(16) NOT NULL CHECK (decision IN ('not_duplicates', 'kept_both')),
    decided_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (hash_a, hash_b),
    CHECK (hash_a < hash_b)
);

-- Whatever removes members (an image deleted, through any path), their groups are counted
-- down and flagged, in the same transaction.
CREATE OR REPLACE FUNCTION duplicate_members_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE duplicate_groups AS g
    SET size = g.size - gone.members, needs_check = true, updated_at = NOW()
    FROM (SELECT group_id, count(*) AS members FROM left_members GROUP BY group_id) AS gone
    WHERE g.id = gone.group_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER duplicate_members_left AFTER DELETE ON duplicate_members
    REFERENCING OLD TABLE AS left_members
    FOR EACH STATEMENT EXECUTE FUNCTION duplicate_members_left();
