using KvmObserve.Native;
using KvmObserve.Native.Kvm;

namespace KvmObserve.Workload;

/// <summary>
/// Wakes a vCPU whose hlt-mode timer interrupt never came: under QEMU's emulated SVM (the test VM's kvm_amd) about
/// one halt in 10,000 sleeps forever. An MSI with the timer's vector, sent by the VMM as a device would, wakes it;
/// the guest's handler counts it like any other interrupt, so the report stays exact, and says how many it took.
/// A healthy vCPU halts for one timer period (200 us by default): one that saw no interrupt for a second is stuck.
/// </summary>
internal sealed unsafe class HaltWatchdog : IDisposable
{
    private readonly MicroVm _vm;
    private readonly int[] _halting;
    private readonly long[] _kicks;
    private readonly TimeSpan _patience;
    private readonly Thread _thread;
    private readonly ManualResetEventSlim _stop = new(false);

    public HaltWatchdog(MicroVm vm, int vcpus, uint timerPeriodNs)
    {
        _vm = vm;
        _halting = new int[vcpus];
        _kicks = new long[vcpus];
        _patience = TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerSecond, timerPeriodNs / 100 * 20));
        _thread = new Thread(Watch) { IsBackground = true, Name = "halt watchdog" };
        _thread.Start();
    }

    /// <summary>Vcpu <paramref name="vcpu"/> runs (true) or has left (false) the hlt program.</summary>
    public void Halting(int vcpu, bool halting) => Volatile.Write(ref _halting[vcpu], halting ? 1 : 0);

    public long Kicks(int vcpu) => Interlocked.Read(ref _kicks[vcpu]);

    private void Watch()
    {
        var seen = new ulong[_halting.Length];
        var watched = new bool[_halting.Length];
        while (!_stop.Wait(_patience))
        {
            for (int v = 0; v < _halting.Length; v++)
            {
                ulong interrupts = _vm.ReadGuestU64(GuestLayout.InterruptCounter(v));
                bool halting = Volatile.Read(ref _halting[v]) == 1;
                if (halting && watched[v] && interrupts == seen[v])
                    Kick(v);
                seen[v] = interrupts;
                watched[v] = halting;
            }
        }
    }

    /// <summary>A fixed, edge-triggered MSI to x2APIC id <paramref name="vcpu"/> (address bits 19:12).</summary>
    private void Kick(int vcpu)
    {
        var msi = new KvmMsi { AddressLo = 0xfee00000u | (uint)vcpu << 12, Data = GuestLayout.TimerVector };
        if (Sys.TryIoctl(_vm.VmFd, KvmIoctl.SignalMsi, (nint)(&msi)) > 0)
            Interlocked.Increment(ref _kicks[vcpu]);
    }

    public void Dispose()
    {
        _stop.Set();
        _thread.Join();
        _stop.Dispose();
    }
}
