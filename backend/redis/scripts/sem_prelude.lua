-- Counting semaphores (semaphore.go), after prelude.lua, whose now_ms, prune
-- and wake they use: KEYS[3] and KEYS[4] are the waiters' queue and
-- heartbeats as for a lock, KEYS[2] the fencing counter. KEYS[1] is the
-- slots hash: field "n" the live size, field "<k>" slot k's permit as
-- "token|exp|ttl|secret|owner" (exp in Redis ms; "" when free). Only the
-- commands lock scripts already run are used, so lockd's ACL stays as it is.
local slots = KEYS[1]

local function parse(rec)
  if not rec or rec == '' then return nil end
  local token, exp, ttl, secret, owner = string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
  return {token = tonumber(token), exp = tonumber(exp), ttl = tonumber(ttl), secret = secret, owner = owner}
end

local function record(p)
  return p.token .. '|' .. p.exp .. '|' .. p.ttl .. '|' .. p.secret .. '|' .. p.owner
end

-- The unexpired permits of slots 0..n-1 (by slot), how many, and the latest
-- deadline. A permit past its deadline is never counted, whoever looks: no
-- lockd need be alive for it to end.
local function read(now, n)
  local live, count, last = {}, 0, 0
  local k = 0
  while k < n do
    local fields = {}
    for i = k, math.min(k + 999, n - 1) do fields[#fields + 1] = tostring(i) end
    local recs = redis.call('HMGET', slots, unpack(fields))
    for i, rec in ipairs(fields) do
      local p = parse(recs[i])
      if p and p.exp > now then
        live[tonumber(rec)] = p
        count = count + 1
        last = math.max(last, p.exp)
      end
    end
    k = k + 1000
  end
  return live, count, last
end

-- live as {slot, token, exp, owner} flattened.
local function flat(live, n)
  local out = {}
  for k = 0, n - 1 do
    local p = live[k]
    if p then
      table.insert(out, k); table.insert(out, p.token); table.insert(out, p.exp); table.insert(out, p.owner)
    end
  end
  return out
end

-- The size is carried by the live permits and the waiters: once neither is
-- left, it is free (the next acquire sets its own).
local function live_size(now, count)
  local cur = tonumber(redis.call('HGET', slots, 'n') or '0')
  if count == 0 and not prune(now) then return 0 end
  return cur
end

-- The slots live as long as their longest permit or waiter.
local function keep(ms)
  local left = tonumber(redis.call('PTTL', slots))
  if left < 0 or left < ms then redis.call('PEXPIRE', slots, ms) end
end
