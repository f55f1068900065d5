-- ARGV: ttl ms (0: keep the session's), the backend's key prefix. Extends
-- an unexpired session, and with it every grant made in it: they read their
-- deadline from the session (prelude.lua). Only when the new deadline
-- reaches gc do the grants' own keys (and their event logs) get a later
-- expiry, an hour past it: the grant set is walked about once an hour, not
-- on every renew. Returns {owner, ttl ms, expires ms}, or 0 when the
-- session is over (never resurrected).
local s, set = KEYS[1], KEYS[2]
local now = now_ms()
local r = redis.call('HMGET', s, 'owner', 'ttl', 'exp', 'gc')
local e = tonumber(r[3])
if not e or e <= now then return 0 end
local ttl = tonumber(ARGV[1])
if ttl == 0 then ttl = tonumber(r[2]) end
local exp = now + ttl
redis.call('HSET', s, 'ttl', ttl, 'exp', exp)
redis.call('PEXPIRE', s, ttl + max_lock_delay)
redis.call('PEXPIRE', set, ttl)
local gc = tonumber(r[4]) or 0
if exp >= gc then
  gc = exp + keep_ms
  redis.call('HSET', s, 'gc', gc)
  for _, m in ipairs(redis.call('SMEMBERS', set)) do
    local kind, base, id = session_member(m, ARGV[2])
    local mine = false
    if kind == 'lock' then
      use(base)
      if redis.call('HGET', lock, 's') == s then
        mine = true
        redis.call('PEXPIRE', lock, gc - now)
        redis.call('PEXPIRE', stream, gc - now + keep_ms)
      end
    elseif kind == 'sem' then
      sem_use(base)
      local k = string.match(id, '%.(%d+)$')
      local p = k and load(k)
      if p and p.sess == s and p.secret .. '.' .. k == id then
        mine = true
        keep(gc - now)
      end
    elseif kind == 'rw' then
      rw_use(base)
      if redis.call('HGET', holders, id .. ':s') == s then
        mine = true
        if tonumber(redis.call('PTTL', holders)) < gc - now then redis.call('PEXPIRE', holders, gc - now) end
      end
    end
    if not mine then redis.call('SREM', set, m) end
  end
end
return {r[1], ttl, exp}
