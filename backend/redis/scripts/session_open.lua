-- KEYS: the session hash, its grant set (for every session script). ARGV:
-- owner, ttl ms. The hash {owner, ttl, exp, gc} lives exactly to the
-- session's deadline exp (Redis's clock); gc is how long its grants' keys
-- are kept at least (acquire.lua), past any deadline the session has had.
-- Returns {owner, ttl ms, expires ms}.
local s = KEYS[1]
local now = now_ms()
local ttl = tonumber(ARGV[2])
local exp = now + ttl
redis.call('HSET', s, 'owner', ARGV[1], 'ttl', ttl, 'exp', exp, 'gc', exp + keep_ms)
redis.call('PEXPIRE', s, ttl + max_lock_delay)
return {ARGV[1], ttl, exp}
