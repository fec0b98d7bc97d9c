local p, me = ARGV[1], ARGV[2]
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if node ~= me and redis.call('EXISTS', p..'node:'..node) == 0 then
    local set = p..'ids:'..node
    local ids = redis.call('SPOP', set, 1000)
    for _, id in ipairs(ids) do
      if redis.call('HGET', p..'id:'..id, 'node') == node then redis.call('DEL', p..'id:'..id) end
    end
    n = n + #ids
    if redis.call('SCARD', set) == 0 then
      redis.call('SREM', p..'nodes', node)
      redis.call('DEL', p..'inbox:'..node, p..'seen:'..node)
    end
  end
end
return n
