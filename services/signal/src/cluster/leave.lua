local p, me = ARGV[1], ARGV[2]
for _, id in ipairs(redis.call('SMEMBERS', p..'ids:'..me)) do
  if redis.call('HGET', p..'id:'..id, 'node') == me then redis.call('DEL', p..'id:'..id) end
end
redis.call('DEL', p..'ids:'..me, p..'node:'..me, p..'inbox:'..me, p..'seen:'..me)
redis.call('SREM', p..'nodes', me)
return 1
