-- Returns {waiting readers, waiting writers, then per unexpired holder:
-- mode, owner, token, expires ms}.
local now = now_ms()
local hs = rw_live(now)
local nr, nw = 0, 0
for _, e in ipairs(rw_waiters(now)) do
  if string.sub(e, 1, 2) == 'w:' then nw = nw + 1 else nr = nr + 1 end
end
local out = {nr, nw}
for _, h in ipairs(hs) do
  out[#out + 1] = h.mode
  out[#out + 1] = h.owner
  out[#out + 1] = h.token
  out[#out + 1] = h.exp
end
return out
