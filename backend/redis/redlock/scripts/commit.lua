-- Commits an idempotent grant on one master that holds it: raises the
-- master's counter and its copy's token to the grant's token and writes the
-- grant's token, expiry and validity into the idempotency record, with the
-- copy's deadline (so that a later retry can tell a renew moved it), unless
-- an earlier attempt committed it already (then its values stay). KEYS: lock,
-- fence, record. ARGV: lease id, token, expiry ms, validity ms. Returns the
-- committed {token, expiry ms, validity ms}, or 0 when the lease does not
-- hold the lock here.
local lock, fence, record = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', lock, 'id') ~= ARGV[1] then return 0 end
local t, e, v = ARGV[2], ARGV[3], ARGV[4]
local r = redis.call('HMGET', record, 'l', 't', 'e', 'v')
if r[1] == ARGV[1] then
  if r[2] then
    t, e, v = r[2], r[3], r[4]
  else
    redis.call('HSET', record, 't', t, 'e', e, 'v', v, 'd', redis.call('HGET', lock, 'exp'))
  end
end
redis.call('HSET', lock, 'token', t)
local cur = tonumber(redis.call('GET', fence) or '0')
if cur < tonumber(t) then redis.call('SET', fence, t) end
return {tonumber(t), tonumber(e), tonumber(v)}
