-- ARGV: slot, secret, ttl ms (0: keep the permit's). Returns {slot, token,
-- exp, ttl, owner, size}, 0 when the lease holds no unexpired permit, or -1
-- when it holds one in a session (renewed only through the session).
local now = now_ms()
local p = load(ARGV[1])
if not p or p.secret ~= ARGV[2] or p.exp <= now then return 0 end
if p.sess then return -1 end
if tonumber(ARGV[3]) > 0 then p.ttl = tonumber(ARGV[3]) end
p.exp = now + p.ttl
redis.call('HSET', slots, ARGV[1], record(p))
keep(p.ttl + p.d + 1)
return {tonumber(ARGV[1]), p.token, p.exp, p.ttl, p.owner, tonumber(redis.call('HGET', slots, 'n') or '0')}
