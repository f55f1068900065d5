-- Returns {waiting readers, waiting writers, the end of the lock-delays in
-- force (0: none), then per unexpired holder: mode, owner, token, expires
-- ms}.
local now = now_ms()
local hs, delays = rw_live(now)
local du = 0
for _, d in ipairs(delays) do du = math.max(du, d.ends) end
local nr, nw = 0, 0
for _, e in ipairs(rw_waiters(now)) do
  if string.sub(e, 1, 2) == 'w:' then nw = nw + 1 else nr = nr + 1 end
end
local out = {nr, nw, du}
for _, h in ipairs(hs) do
  out[#out + 1] = h.mode
  out[#out + 1] = h.owner
  out[#out + 1] = h.token
  out[#out + 1] = h.exp
end
return out
