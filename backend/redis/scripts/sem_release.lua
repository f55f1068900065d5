-- ARGV: slot ('' when unknown: then any live permit with the secret goes),
-- secret, wake channel, waiter id ('' for none: an acquire that gives up
-- leaves the line too). Returns 1 when a live permit was released, 0
-- otherwise. The head of the line is woken: for the freed slot, or because
-- the leaver may have been the head just woken.
local now = now_ms()
if ARGV[4] ~= '' then
  redis.call('LREM', queue, 0, ARGV[4])
  redis.call('ZREM', beats, ARGV[4])
end
local released = 0
if ARGV[1] == '' and ARGV[2] ~= '' then
  -- A give-up whose grant may have been made (a lost reply): find it.
  local live = read(now, tonumber(redis.call('HGET', slots, 'n') or '0'))
  for k, p in pairs(live) do
    if p.secret == ARGV[2] then clear(tostring(k), p) end
  end
elseif ARGV[1] ~= '' then
  local p = load(ARGV[1])
  if p and p.secret == ARGV[2] then
    if p.exp > now then
      released = 1
      clear(ARGV[1], p)
    elseif p.exp + p.d <= now then
      clear(ARGV[1], p)
    end
    -- (expired inside its lock-delay: refused, and the delay stays)
  end
end
wake(now, ARGV[3])
return released
