-- Returns {owner, ttl ms, expires ms} of an unexpired session, or 0.
local r = redis.call('HMGET', KEYS[1], 'owner', 'ttl', 'exp')
local e = tonumber(r[3])
if not e or e <= now_ms() then return 0 end
return {r[1], tonumber(r[2]), e}
