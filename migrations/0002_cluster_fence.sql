-- Fencing tokens of a Weir cluster's Postgres sinks (docs/cluster.md): one row per sink
-- scope and key partition, its epoch raised by every member that takes the partition
-- over. A sink transaction carrying rows of key partitions checks, under a share lock,
-- that the epochs it claimed are still the current ones: a member that was paused while
-- another took its partitions over has its late writes rolled back.

CREATE TABLE IF NOT EXISTS weir.cluster_fence (
    scope text NOT NULL,
    kp integer NOT NULL,
    epoch bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, kp)
);

-- Raise SQLSTATE WF001 unless every (kp, epoch) pair is current for scope. The share
-- locks hold until the calling transaction ends, so a take-over (which updates the rows)
-- waits for a transaction that passed the check, and every later one sees its epoch.
CREATE OR REPLACE FUNCTION weir.check_fence(p_scope text, p_kps integer[], p_epochs bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    valid integer;
BEGIN
    PERFORM 1 FROM weir.cluster_fence
        WHERE scope = p_scope AND kp = ANY (p_kps)
        ORDER BY kp
        FOR SHARE;
    SELECT count(*) INTO valid
        FROM weir.cluster_fence f
        JOIN unnest(p_kps, p_epochs) AS held(kp, epoch) ON f.kp = held.kp AND f.epoch = held.epoch
        WHERE f.scope = p_scope;
    IF valid < cardinality(p_kps) THEN
        RAISE EXCEPTION 'key partitions of % were taken over by another member', p_scope
            USING ERRCODE = 'WF001';
    END IF;
END
$$;
